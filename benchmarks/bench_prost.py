"""ProST vs DiffDRR: speed, peak memory and image agreement at the same geometry.

Usage::

    python benchmarks/bench_prost.py [--sizes paper lite native] [--repeats 10] [--ct CT.nii.gz] [--out FILE]

Prints a markdown section (the one in ``docs/benchmarks.md``, "ProST vs DiffDRR") to stdout,
or writes it to ``--out``. Peak memory: each case (size x renderer x measurement) runs in a
fresh subprocess, so that its peak is its own. Times: one subprocess per size runs all its
cases round-robin, so that load from other processes falls on all of them alike. DiffDRR is
optional (``pip install --no-deps diffdrr==0.6.1`` plus the ``bench`` extra); without it only
the ProST rows are reported. nanodrr (``pip install nanodrr==0.1.7``), DiffDRR's faster
reimplementation, adds a row when installed: its pure-PyTorch renderer, the one it runs on CPU
(its fused Triton kernel needs CUDA).

ProST rows: "ProST" is ``ProST(view, grid, num_samples=K)`` as it comes (``algorithm="auto"``: on
CPU the slice walk, Joseph's method); "ProST rays" is ``algorithm="rays"``, K trilinear samples per
ray (the only algorithm before the slice walk, and the one of beam space). Agreement is also given
against ray sampling at 8 K samples per ray ("exact": the line integral of the volume's trilinear
interpolant, to ~1e-5).

Geometry (both renderers): the AP view of :func:`biplanar.geometry.biplanar_pair`: source at
+y 925 mm from the isocentre (the world origin, also the volume's centre), detector plane
75 mm behind it (source-detector 1000 mm), columns towards -x, rows towards -z. DiffDRR gets
the same volume values (attenuation, 1/mm) and voxel spacing; its own HU-to-density mapping is
bypassed by replacing its ``density`` buffer. Both return line integrals (1/mm x mm).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import platform
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from harness import round_robin_medians, run_cli, spawn_job

from biplanar.data.real_ct import REAL_CT
from biplanar.geometry import CarmPose, VolumeGrid, biplanar_pair
from biplanar.io.volumes import read_volume
from biplanar.layers.prost import ProST
from biplanar.physics.attenuation import MU_WATER_PER_MM, hu_to_mu

RENDERERS = ("ProST", "ProST rays", "DiffDRR Siddon", "DiffDRR Trilinear", "nanodrr torch")
PROST_ALGORITHMS = {"ProST": "auto", "ProST rays": "rays"}
DIFFDRR_BACKENDS = {"DiffDRR Siddon": "siddon", "DiffDRR Trilinear": "trilinear"}
# Renderers whose rays end at the detector plane (Siddon's and ProST's cross the whole volume).
RAYS_END_AT_DETECTOR = ("DiffDRR Trilinear", "nanodrr torch")
# forward only (no autograd graph); forward + backward w.r.t. the volume; w.r.t. a 4x4 pose.
MEASUREMENTS = ("forward", "volume", "pose")
MEASUREMENT_NAMES = {"forward": "forward", "volume": "forward+backward (volume)", "pose": "forward+backward (pose)"}
PROST_MEMORY_TARGET_MB = 2048.0
NCC_TARGET = 0.99
# ProST (as it comes) at least this many times faster than DiffDRR Siddon (issue 19): forward; with the backward.
FORWARD_SPEEDUP_TARGET = 25.0
BACKWARD_SPEEDUP_TARGET = 10.0
# Samples per ray of the reference ("exact") image, per sample of the size's K.
REFERENCE_OVERSAMPLING = 8


@dataclass(frozen=True)
class BenchSize:
    """One benchmark geometry.

    Attributes:
        name: ``"paper"`` or ``"lite"``.
        volume_shape: ``(I, J, K)`` voxels.
        spacing_mm: ``(3,)`` voxel size along i, j, k, mm.
        image_shape: ``(rows, cols)`` of the detector.
        pixel_spacing_mm: ``(row, col)`` detector spacing, mm.
        num_samples: ``K``, samples per ray (ProST and DiffDRR's Trilinear renderer).
    """

    name: str
    volume_shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    image_shape: tuple[int, int]
    pixel_spacing_mm: tuple[float, float]
    num_samples: int

    def grid(self) -> VolumeGrid:
        """The volume's grid, centred on the world origin (the isocentre)."""
        return VolumeGrid.from_spacing(self.volume_shape, self.spacing_mm)


SIZES = {
    "paper": BenchSize("paper", (192, 128, 192), (0.664, 0.664, 1.0), (224, 160), (0.93, 0.93), 256),
    "lite": BenchSize("lite", (96, 64, 96), (1.328, 1.328, 2.0), (112, 80), (1.86, 1.86), 128),
}
# "native": the CT on its own voxel grid (shape and spacing as stored), the paper's detector and K.
NATIVE = "native"


def bench_size(name: str, ct_path: Path) -> BenchSize:
    """``SIZES[name]``, or for ``"native"`` the CT file's own shape and spacing (axis-aligned, centred
    on the isocentre) with the paper size's detector and ``K``."""
    if name != NATIVE:
        return SIZES[name]
    hu, grid = read_volume(ct_path)
    paper = SIZES["paper"]
    (i, j, k), (si, sj, sk) = hu.shape, (round(float(value), 4) for value in grid.spacing_mm)
    return BenchSize(NATIVE, (i, j, k), (si, sj, sk), paper.image_shape, paper.pixel_spacing_mm, paper.num_samples)


def volume_crosses_detector(size: BenchSize) -> bool:
    """Whether the volume reaches past the AP detector plane (the isocentre-detector distance behind the
    isocentre). :data:`RAYS_END_AT_DETECTOR` then miss the part beyond."""
    carm = biplanar_pair(image_shape=size.image_shape, pixel_spacing_mm=size.pixel_spacing_mm)["AP"].carm
    assert carm is not None  # biplanar_pair's views are C-arm views
    half_depth_mm = (size.volume_shape[1] - 1) / 2 * size.spacing_mm[1]
    return half_depth_mm > carm.source_detector_mm - carm.source_isocenter_mm


def attenuation_volume(size: BenchSize, ct_path: Path) -> tuple[torch.Tensor, str]:
    """The benchmark volume: ``(1, 1, I, J, K)`` float32 attenuation (1/mm) on ``size.grid()``.

    The real CT (HU) is resampled as a whole onto the grid's shape (trilinear; its anatomy is
    scaled to fit the box, which changes neither renderer's cost) and mapped to attenuation.
    Without the CT file, a synthetic HU phantom of the same shape is used instead.

    Returns:
        the volume and a one-line description of where it came from.
    """
    if ct_path.is_file():
        ct_hu, _ = read_volume(ct_path)
        hu = torch.from_numpy(ct_hu).float()[None, None]
        kept = ct_hu.shape == size.volume_shape
        description = f"real CT `{ct_path.name}` {'on its own grid' if kept else 'resampled to the grid'}"
    else:
        hu = phantom_hu(size.volume_shape)[None, None]
        description = f"synthetic phantom ({ct_path} not found)"
        print(f"note: {ct_path} not found; using a synthetic phantom", file=sys.stderr)
    if hu.shape[2:] != size.volume_shape:
        hu = F.interpolate(hu, size=size.volume_shape, mode="trilinear", align_corners=True)
    description += f", attenuation {MU_WATER_PER_MM} x max(0, 1 + HU/1000) per mm"
    return hu_to_mu(hu).contiguous(), description


def phantom_hu(shape: tuple[int, int, int]) -> torch.Tensor:
    """``(I, J, K)`` HU: air, an elliptic water cylinder along k, and two bone cylinders in it."""
    i, j, _ = torch.meshgrid(*(torch.linspace(-1.0, 1.0, n) for n in shape), indexing="ij")
    hu = torch.full(shape, -1000.0)
    hu[i**2 / 0.9**2 + j**2 / 0.8**2 < 1.0] = 0.0
    for centre_i in (-0.45, 0.45):
        hu[(i - centre_i) ** 2 + j**2 < 0.15**2] = 1000.0
    return hu


def build_renderer(renderer: str, size: BenchSize, volume: torch.Tensor) -> Callable[..., torch.Tensor]:
    """``render(volume, pose) -> (rows, cols)`` line integrals for one renderer.

    ``volume`` is ``(1, 1, I, J, K)`` attenuation (1/mm) on ``size.grid()``; ``pose`` is a
    ``(1, 4, 4)`` rigid map, the identity in this benchmark, there to take gradients w.r.t.:
    ProST moves the volume by it, DiffDRR composes it with its camera pose.
    """
    view = biplanar_pair(image_shape=size.image_shape, pixel_spacing_mm=size.pixel_spacing_mm)["AP"]
    if renderer in PROST_ALGORITHMS:
        prost = ProST(view, size.grid(), num_samples=size.num_samples, algorithm=PROST_ALGORITHMS[renderer])
        return lambda volume, pose: prost(volume, pose)[0, 0]
    if renderer == "nanodrr torch":
        return build_nanodrr(size, volume, view.carm)
    return build_diffdrr(DIFFDRR_BACKENDS[renderer], size, volume, view.carm)


def build_diffdrr(backend: str, size: BenchSize, volume: torch.Tensor, carm: CarmPose) -> Callable[..., torch.Tensor]:
    """DiffDRR's ``backend`` renderer at the geometry of the AP C-arm ``carm`` (module docstring)."""
    from diffdrr.data import read
    from diffdrr.drr import DRR
    from diffdrr.pose import RigidTransform
    from torchio import ScalarImage

    grid = size.grid()
    subject = read(ScalarImage(tensor=volume[0].detach(), affine=grid.affine), orientation="AP")
    rows, cols = size.image_shape
    drr = DRR(
        subject,
        sdd=carm.source_detector_mm,
        height=rows,
        delx=carm.pixel_spacing_mm[1],
        width=cols,
        dely=carm.pixel_spacing_mm[0],
        renderer=backend,
    )
    # With orientation="AP", rotation 0 and translation (0, d, 0) put the source at +y, d mm.
    camera = torch.eye(4)
    camera[1, 3] = carm.source_isocenter_mm
    options = {"n_points": size.num_samples} if backend == "trilinear" else {}

    def render(volume: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        # DiffDRR renders its `density` buffer (X, Y, Z) as is: give it our attenuation volume.
        drr.density = volume[0, 0]
        return drr(RigidTransform(pose @ camera), **options)[0, 0]

    return render


def build_nanodrr(size: BenchSize, volume: torch.Tensor, carm: CarmPose) -> Callable[..., torch.Tensor]:
    """nanodrr's pure-PyTorch renderer (``backend="torch"``, the one it runs on CPU) at the geometry
    of the AP C-arm ``carm``, ``K`` samples per ray inside the volume."""
    from nanodrr.camera import make_rt_inv
    from nanodrr.data import Subject
    from nanodrr.drr import DRR
    from torchio import ScalarImage

    grid = size.grid()
    subject = Subject.from_images(ScalarImage(tensor=volume[0].detach(), affine=grid.affine), convert_to_mu=False)
    rows, cols = size.image_shape
    drr = DRR.from_carm_intrinsics(
        carm.source_detector_mm, carm.pixel_spacing_mm[1], carm.pixel_spacing_mm[0], 0.0, 0.0, rows, cols
    )
    # As DiffDRR's: orientation "AP", no rotation, the source at +y, source-isocentre mm from the origin.
    camera = make_rt_inv(torch.zeros(1, 3), torch.tensor([[0.0, carm.source_isocenter_mm, 0.0]]), "AP", torch.zeros(3))

    def render(volume: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        subject._image_hu = volume.permute(0, 1, 4, 3, 2)  # (1, 1, I, J, K) -> nanodrr's (1, 1, K, J, I)
        return drr(subject, pose @ camera, n_samples=size.num_samples, backend="torch")[0, 0]

    return render


@dataclass(frozen=True)
class Job:
    """A subprocess's job on one size.

    ``kind="memory"``: one case (``renderers[0]``, ``measurements[0]``), two runs, peak memory,
    and for ``forward`` the image saved to ``image_path``. ``kind="timing"``: every case of the
    size, timed round-robin (one run of each case per round) so that load from other processes
    on the machine falls on all cases alike.
    """

    kind: str
    size: str
    renderers: tuple[str, ...]
    measurements: tuple[str, ...]
    volume_path: str
    ct: str
    image_path: str = ""
    repeats: int = 1
    warmup: int = 1
    threads: int = 2


def make_step(renderer: str, measurement: str, size: BenchSize, volume: torch.Tensor) -> Callable[[], torch.Tensor]:
    """One run of a case: ``step() -> (rows, cols)`` image, with the backward pass if asked."""
    render = build_renderer(renderer, size, volume)
    volume = volume.detach().clone().requires_grad_(measurement == "volume")
    pose = torch.eye(4).unsqueeze(0).requires_grad_(measurement == "pose")

    def step() -> torch.Tensor:
        if measurement == "forward":
            with torch.no_grad():
                return render(volume, pose)
        image = render(volume, pose)
        image.sum().backward()
        volume.grad = pose.grad = None
        return image.detach()

    return step


def run_job(job: Job) -> dict:
    """Run ``job`` in this process (see :class:`Job`).

    Returns:
        ``memory``: ``{"peak_extra_mb": MiB}``; ``timing``: ``{"renderer/measurement": median ms}``.
    """
    torch.set_num_threads(job.threads)
    size = bench_size(job.size, Path(job.ct))
    volume = torch.load(job.volume_path, weights_only=True)
    steps = {f"{r}/{m}": make_step(r, m, size, volume) for r in job.renderers for m in job.measurements}
    if job.kind == "memory":
        ((name, step),) = steps.items()
        baseline_mb = reset_peak_rss_mb()
        step()
        image = step()
        if name.endswith("/forward"):
            np.save(job.image_path, image.double().numpy())
        return {"peak_extra_mb": proc_status_mb("VmHWM") - baseline_mb}
    medians = round_robin_medians(steps, job.repeats, job.warmup)
    return {name: 1e3 * seconds for name, seconds in medians.items()}


def proc_status_mb(field: str) -> float:
    """A memory field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in MiB (Linux only)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak_rss_mb() -> float:
    """Reset the peak resident set (VmHWM) to the current one, and return the current one in MiB.

    Linux's ``clear_refs`` value 5 does this, so the set-up's own transient peak (reading the
    volume, DiffDRR's HU-to-density mapping) does not hide the rendering's.
    """
    Path("/proc/self/clear_refs").write_text("5")
    return proc_status_mb("VmRSS")


def run_in_fresh_process(job: Job) -> dict:
    """:func:`harness.spawn_job` of this script, raising on failure."""
    result = spawn_job(__file__, job)
    if "failed" in result:
        raise RuntimeError(f"job {job}: {result['failed']}")
    return result


def agreement(image: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """Normalised cross-correlation and relative L1 ``sum|image - reference| / sum|reference|``.

    Args:
        image, reference: ``(rows, cols)`` line integrals, float64.
    """
    a, b = image - image.mean(), reference - reference.mean()
    ncc = float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))
    return ncc, float(np.abs(image - reference).sum() / np.abs(reference).sum())


def installed_version(package: str, module: str) -> str | None:
    """``package``'s version if its renderer ``module`` imports, else ``None``."""
    try:
        importlib.import_module(module)
    except ImportError:
        return None
    return version(package)


def exact_image(size: BenchSize, volume: torch.Tensor) -> np.ndarray:
    """``(rows, cols)`` float64 reference line integrals: ray sampling at ``REFERENCE_OVERSAMPLING x K``
    samples per ray, the integral of the volume's trilinear interpolant to ~1e-5."""
    view = biplanar_pair(image_shape=size.image_shape, pixel_spacing_mm=size.pixel_spacing_mm)["AP"]
    prost = ProST(view, size.grid(), REFERENCE_OVERSAMPLING * size.num_samples, algorithm="rays")
    with torch.no_grad():
        return prost(volume)[0, 0].double().numpy()


def run_size(
    size: BenchSize, renderers: tuple[str, ...], args: argparse.Namespace, volume_path: Path, exact: np.ndarray
) -> list[dict]:
    """All cases of one size: rows ``{renderer, forward, volume, pose, *_mb, ncc, rel_l1, exact_l1}``
    (agreement with the first renderer's image and with ``exact``, :func:`exact_image`)."""
    rows = []
    for renderer in renderers:
        image_path = volume_path.with_name(f"{size.name}_{renderer.replace(' ', '_')}.npy")
        row: dict = {"renderer": renderer}
        for measurement in MEASUREMENTS:
            print(f"memory: {size.name} / {renderer} / {measurement}", file=sys.stderr)
            job = Job(
                "memory",
                size.name,
                (renderer,),
                (measurement,),
                str(volume_path),
                str(args.ct),
                str(image_path),
                threads=args.threads,
            )
            row[f"{measurement}_mb"] = run_in_fresh_process(job)["peak_extra_mb"]
        row["image"] = np.load(image_path)
        rows.append(row)
    print(f"timing: {size.name}, {args.repeats} rounds", file=sys.stderr)
    times = run_in_fresh_process(
        Job(
            "timing",
            size.name,
            renderers,
            MEASUREMENTS,
            str(volume_path),
            str(args.ct),
            repeats=args.repeats,
            warmup=args.warmup,
            threads=args.threads,
        )
    )
    for row in rows:
        row.update({m: times[f"{row['renderer']}/{m}"] for m in MEASUREMENTS})
        row["ncc"], row["rel_l1"] = agreement(row["image"], rows[0]["image"])
        row["exact_l1"] = agreement(row["image"], exact)[1]
    return rows


def size_table(size: BenchSize, rows: list[dict], volume_description: str) -> list[str]:
    """Markdown lines: one table of times, ratios, memory and agreement for one size."""
    prost = rows[0]
    lines = [
        f"**{size.name}**: volume {'x'.join(map(str, size.volume_shape))} at "
        f"{'x'.join(map(str, size.spacing_mm))} mm, detector {size.image_shape[0]} rows x "
        f"{size.image_shape[1]} cols at {size.pixel_spacing_mm[0]} mm, K = {size.num_samples}; "
        f"{volume_description}.",
        "",
        "| renderer | forward ms | / ProST | fwd+bwd (volume) ms | / ProST | fwd+bwd (pose) ms "
        "| / ProST "
        "| peak extra MiB fwd / vol / pose | NCC vs ProST | rel. L1 vs ProST | rel. L1 vs exact |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        cells = [row["renderer"]]
        for measurement in MEASUREMENTS:
            cells += [f"{row[measurement]:.1f}", f"{row[measurement] / prost[measurement]:.2f}"]
        cells.append(" / ".join(f"{row[f'{m}_mb']:.0f}" for m in MEASUREMENTS))
        if row is prost:
            cells += ["(reference)", "(reference)"]
        else:
            cells += [f"{row['ncc']:.5f}", f"{100 * row['rel_l1']:.3f} %"]
        cells.append(f"{100 * row['exact_l1']:.4f} %")
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def target_lines(rows: list[dict]) -> list[str]:
    """Markdown lines stating whether the paper-size targets are met."""
    prost = rows[0]
    memory = max(prost[f"{m}_mb"] for m in MEASUREMENTS)
    lines = [
        f"- ProST peak extra memory < {PROST_MEMORY_TARGET_MB:.0f} MiB: "
        f"{'met' if memory < PROST_MEMORY_TARGET_MB else 'NOT met'} ({memory:.0f} MiB at most)."
    ]
    siddon = next((row for row in rows if row["renderer"] == "DiffDRR Siddon"), None)
    if siddon is None:
        return lines + ["- Speed and agreement targets: not checked (DiffDRR not installed)."]
    for measurement, target in zip(MEASUREMENTS, (FORWARD_SPEEDUP_TARGET, *2 * (BACKWARD_SPEEDUP_TARGET,))):
        ratio = siddon[measurement] / prost[measurement]
        lines.append(
            f"- ProST {MEASUREMENT_NAMES[measurement]} >= {target:.0f}x faster than DiffDRR Siddon: "
            f"{'met' if ratio >= target else 'NOT met'} ({prost[measurement]:.1f} vs "
            f"{siddon[measurement]:.1f} ms, {ratio:.1f}x)."
        )
    lines.append(
        f"- NCC >= {NCC_TARGET} between ProST and DiffDRR Siddon: "
        f"{'met' if siddon['ncc'] >= NCC_TARGET else 'NOT met'} ({siddon['ncc']:.5f})."
    )
    return lines


def cpu_name() -> str:
    """The CPU's model name (Linux), else the machine type."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.machine()


def report(args: argparse.Namespace) -> str:
    """Run every case and return the markdown section."""
    version = installed_version("diffdrr", "diffdrr.drr")
    nanodrr = installed_version("nanodrr", "nanodrr.drr")
    renderers = tuple(r for r in RENDERERS if version or r == "ProST")
    renderers = tuple(r for r in renderers if nanodrr or not r.startswith("nanodrr"))
    command = " ".join(["python benchmarks/bench_prost.py", *sys.argv[1:]])
    lines = [
        f"Command: `{command}`, {datetime.date.today().isoformat()}. Machine: {cpu_name()}, "
        f"{os.cpu_count()} logical CPUs, torch {torch.__version__}, {args.threads} threads "
        f"(OMP_WAIT_POLICY {os.environ.get('OMP_WAIT_POLICY', 'unset')}), "
        f"DiffDRR {version or 'not installed'}, nanodrr {nanodrr or 'not installed'}.",
        f"Times: medians of {args.repeats} rounds after {args.warmup} warm-up rounds; / ProST = "
        "this renderer's time / ProST's (above 1: ProST is faster). Peak extra memory: the rise "
        "of the process's peak resident set over its set-up (fresh process per case).",
        "",
    ]
    if version is None:
        lines += ["DiffDRR is not installed: ProST rows only.", ""]
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.sizes:
            size = bench_size(name, args.ct)
            volume, description = attenuation_volume(size, args.ct)
            volume_path = Path(workdir) / f"{name}_volume.pt"
            torch.save(volume, volume_path)
            torch.set_num_threads(args.threads)
            size_renderers = renderers
            if volume_crosses_detector(size) and set(renderers) & set(RAYS_END_AT_DETECTOR):
                size_renderers = tuple(r for r in renderers if r not in RAYS_END_AT_DETECTOR)
                description += (
                    f"; no {' or '.join(RAYS_END_AT_DETECTOR)} row: the volume reaches past the detector "
                    "plane, where their rays end"
                )
            rows = run_size(size, size_renderers, args, volume_path, exact_image(size, volume))
            lines += size_table(size, rows, description)
            if name in ("paper", NATIVE):
                lines += [f"Targets at the {name} size:", *target_lines(rows), ""]
    lines.insert(
        2,
        f"Load average (1 min) of the machine: {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after (other processes share the cores; the "
        "ratios come from interleaved rounds, so they are fairer than absolute times).",
    )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        nargs="+",
        choices=[*sorted(SIZES), NATIVE],
        default=["paper", "lite"],
        help=f"benchmark geometries; {NATIVE}: the --ct file on its own voxel grid, the paper's detector and K",
    )
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per case (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs before timing")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument(
        "--ct", type=Path, default=REAL_CT, help="CT volume in HU (default: the real CT shipped with the package)"
    )
    parser.add_argument("--out", type=Path, help="write the markdown here instead of stdout")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one case, as JSON
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    run_cli(parse_args, Job, run_job, report, argv)


if __name__ == "__main__":
    main()
