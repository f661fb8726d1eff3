"""The ``biplanar`` command line: thin commands over the Python API (``docs/contract.md`` section 5).

Each command parses its options, calls one function of :mod:`biplanar.api` (``docs/api.md``) with
the parsed values and prints a summary; it imports the API inside the command, so that
``biplanar --help`` loads neither the API nor torch. A command's parameters are named as its API
function's (the option's name may differ: ``--samples`` is ``num_samples``), so that a command
whose options all go to the API forwards them as they are: ``options = locals()``, its first
statement, is every option by parameter name.

Every command exits 0 on success; on bad input it prints one line naming the file or field and
exits 2 (``--debug`` shows the traceback instead); outputs are written atomically.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn

import typer

from biplanar.config import DEFAULT_MAX_MEMORY_GB, DEFAULT_NUM_SAMPLES, MAX_MEMORY_ENV
from biplanar.errors import InputError

if TYPE_CHECKING:
    from biplanar.training.trainer import TrainResult

app = typer.Typer(
    name="biplanar",
    help="Patient-specific 3D bone models from two calibrated radiographs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
_state = {"debug": False}
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT


@app.callback()
def _options(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
    max_memory: float | None = typer.Option(
        None,
        "--max-memory",
        metavar="GiB",
        help=f"Refuse a config (YAML or a checkpoint's) whose network needs more than this many GiB "
        f"(default: ${MAX_MEMORY_ENV}, else {DEFAULT_MAX_MEMORY_GB:g}).",
    ),
) -> None:
    _state["debug"] = debug
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops a command as Ctrl-C does, cleaning up
    if max_memory is not None:
        with _reporting_errors():
            if not 0.0 < max_memory < math.inf:
                raise InputError(f"--max-memory: expected a finite number of GiB > 0, got {max_memory}")
        # The config validation (biplanar.config.memory_limit_bytes) reads the variable; worker
        # processes and torchrun's ranks inherit it.
        os.environ[MAX_MEMORY_ENV] = repr(float(max_memory))


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM's handler: raise ``KeyboardInterrupt``, so that a terminated command unwinds as an
    interrupted one (partial outputs removed, training checkpointed) and exits 130."""
    raise KeyboardInterrupt


def _exit_interrupted(message: str) -> NoReturn:
    """Print ``message`` (one line, on stderr) and exit with :data:`EXIT_INTERRUPTED`.

    A ``KeyboardInterrupt`` raised while CPython runs ``exec`` on a string (``dataclasses`` does,
    for every dataclass torch defines while it imports) sets the interpreter's "unhandled
    KeyboardInterrupt" flag even when the interruption is caught here; the interpreter then ends by
    killing itself with SIGINT, which a parent process sees as -2 instead of 130. Each ``exec`` of a
    string clears that flag when it starts, so an empty one before exiting restores the exit code.
    """
    typer.echo(message, err=True)
    exec("")  # clears CPython's stale unhandled-KeyboardInterrupt flag (see above)
    raise typer.Exit(EXIT_INTERRUPTED) from None


@contextlib.contextmanager
def _reporting_errors() -> Iterator[None]:
    """Turn bad input into a one-line message and exit code 2, and Ctrl-C into one line and exit
    code 130 (a traceback with ``--debug``). Outputs are written atomically, so an interrupted
    command leaves none half-written."""
    try:
        yield
    except (InputError, OSError) as error:
        if _state["debug"]:
            raise
        message = str(error) if isinstance(error, InputError) else f"{error.filename}: {error.strerror}"
        typer.echo(f"biplanar: error: {message}", err=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except KeyboardInterrupt:
        if _state["debug"]:
            raise
        _exit_interrupted("biplanar: interrupted: no output was left half-written")


@contextlib.contextmanager
def _reporting_interruption(how_to_continue: str = "continue with --resume") -> Iterator[None]:
    """Turn a training stopped by Ctrl-C (its checkpoint written) into one line and exit code 130.

    Training raises :class:`biplanar.training.trainer.TrainingInterrupted`, a ``KeyboardInterrupt``
    with the ``checkpoint`` it wrote; any other interruption propagates.
    """
    try:
        yield
    except KeyboardInterrupt as stop:
        checkpoint = getattr(stop, "checkpoint", None)
        if checkpoint is None:
            raise
        _exit_interrupted(f"biplanar: interrupted: checkpoint {checkpoint}; {how_to_continue}")


def _best(value: float, decimals: int) -> str:
    """A best validation score for the summary line: ``n/a`` when no validation ran (NaN)."""
    return "n/a" if math.isnan(value) else f"{value:.{decimals}f}"


def _trained(result: TrainResult, out: Path, what: str = "") -> str:
    """The summary line of ``train`` and ``train-baseline`` (``what``: ``"<method> for "``)."""
    return (
        f"trained {what}{result.epochs_completed} epochs ({result.global_step} steps); "
        f"best validation Dice {_best(result.best_val_dice, 3)}; checkpoints in {out}"
    )


# The choices of the options: typer checks a value against them and lists them in --help.
VolumeUnits = Literal["hu", "mu"]
DrrMode = Literal["line_integral", "beer_lambert", "poisson", "polychromatic", "clinical"]
GeometryKind = Literal["orthogonal", "generalized", "mixed"]
BaselineMethod = Literal["kasten", "sdm"]
PoseNetwork = Literal["rtpi", "fine"]
CorrectionMethod = Literal["opt-gc", "opt-ncc", "opt-ngi"]
PoseMethod = Literal["opt-gc", "opt-ncc", "opt-ngi", "sopi", "sopi+opt"]
Side = Literal["left", "right"]
Intensity = Literal["auto", "line-integral", "transmission"]
MeshFormat = Literal["stl", "ply", "obj", "vtk"]
ExperimentBudget = Literal["tiny", "lite", "paper"]


@app.command()
def drr(
    volume: Path = typer.Option(..., help="CT or attenuation volume (.nii/.nii.gz)."),
    geometry: Path = typer.Option(..., help="geometry.json (CONTRACT section 2)."),
    out: Path = typer.Option(..., help="Output image (.npy or .tif, float32)."),
    view: str = typer.Option("AP", help="Name of the view in the geometry file."),
    mode: DrrMode = typer.Option("line_integral", help="DRR values (CONTRACT section 3)."),
    units: VolumeUnits = typer.Option("hu", help="Volume values: HU, or mu in 1/mm."),
    mu_water_per_mm: float = typer.Option(0.02, "--mu-water", help="Attenuation of water, 1/mm (for HU volumes)."),
    num_samples: int = typer.Option(DEFAULT_NUM_SAMPLES, "--samples", min=1, help="Samples per ray."),
    photons: float = typer.Option(1e5, min=1.0, help="Photons per pixel (mode poisson)."),
    seed: int = typer.Option(0, help="Noise seed (mode poisson)."),
    kvp: float = typer.Option(80.0, min=20.0, max=150.0, help="Tube voltage (mode polychromatic)."),
    aluminium_mm: float = typer.Option(2.5, min=0.0, help="Filtration, mm Al (mode polychromatic)."),
    preview: Path | None = typer.Option(None, help="Also write an 8-bit PNG preview here."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out (and --preview)."),
) -> None:
    """Render a DRR of a volume for one view of a geometry file."""
    options = locals()
    with _reporting_errors():
        from biplanar import api  # lazy: CLI start-up time

        image = api.drr(**options)
        typer.echo(f"wrote {out} ({image.shape[0]} x {image.shape[1]}, min {image.min():.4g}, max {image.max():.4g})")


@app.command()
def geometry(
    out: Path = typer.Option(..., help="geometry.json to write."),
    ap_angle: float = typer.Option(0.0, help="LAO/RAO angle of the AP view, degrees."),
    lat_angle: float = typer.Option(90.0, help="LAO/RAO angle of the LAT view, degrees."),
    rows: int = typer.Option(224, min=1, help="Detector rows."),
    cols: int = typer.Option(160, min=1, help="Detector columns."),
    pixel_spacing: float = typer.Option(0.93, min=1e-6, help="Detector pixel spacing, mm."),
    from_dicom: tuple[Path, Path] | None = typer.Option(
        None,
        "--from-dicom",
        help="AP and LAT DICOM radiographs: write the geometry of their tags (angle and size options unused).",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out."),
) -> None:
    """Write a C-arm geometry file at the paper's distances, or the one two DICOM radiographs' tags
    give (isocentre: the volume's centre)."""
    with _reporting_errors():
        from biplanar import api  # lazy: CLI start-up time

        if from_dicom is not None:
            api.geometry_from_dicom(from_dicom[0], from_dicom[1], out, overwrite=overwrite)
        else:
            api.write_geometry(out, ap_angle, lat_angle, (rows, cols), pixel_spacing, overwrite=overwrite)
        typer.echo(f"wrote {out}")


def _check_atlas_sources(
    from_ct: Path | None, labels: Path | None, label: int | None, side: str | None, from_dataset: Path | None
) -> None:
    """Raise :class:`InputError` unless the ``atlas`` options name one source with its companions."""
    if from_ct is not None and from_dataset is not None:
        raise InputError("--from-ct and --from-dataset exclude each other")
    if from_ct is None and (labels is not None or label is not None or side is not None):
        raise InputError("--labels, --label and --side go with --from-ct")
    if from_ct is not None and (labels is None or label is None):
        raise InputError("--from-ct needs --labels and --label")
    if from_ct is not None and side is None:
        raise InputError("--from-ct needs --side")


@app.command()
def atlas(
    out: Path = typer.Option(..., help="Folder to write atlas.nii.gz, atlas_labels.nii.gz, landmarks.json."),
    preset: str | None = typer.Option(
        None, help="Grid preset: paper, lite or tiny (default: lite; with --from-dataset the dataset's)."
    ),
    from_ct: Path | None = typer.Option(
        None, "--from-ct", help="Build the atlas from one femur of this CT (HU, NIfTI): the paper's atlas."
    ),
    labels: Path | None = typer.Option(None, help="With --from-ct: its label map (e.g. TotalSegmentator's)."),
    label: int | None = typer.Option(None, help="With --from-ct: the femur's value in --labels."),
    side: Side | None = typer.Option(None, help="With --from-ct: which femur it is (a left one is mirrored)."),
    from_dataset: Path | None = typer.Option(
        None, "--from-dataset", help="Build a mean atlas of this `biplanar simulate` dataset's train subjects."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Phantom atlas only: write into a non-empty --out, replacing its four files."
    ),
) -> None:
    """Write a femur atlas: the mean-shape phantom, one CT's femur (--from-ct) or a dataset's mean (--from-dataset)."""
    with _reporting_errors():
        _check_atlas_sources(from_ct, labels, label, side, from_dataset)
        from biplanar import api  # lazy: CLI start-up time

        api.write_atlas(out, preset, from_ct, labels, label, side, from_dataset, overwrite=overwrite)
        if from_ct is not None:
            typer.echo(f"wrote the atlas of femur {label} of {from_ct} to {out}")
        elif from_dataset is not None:
            typer.echo(f"wrote the mean atlas of {from_dataset} to {out}")
        else:
            typer.echo(f"wrote the {preset or 'lite'} atlas to {out}")


@app.command()
def simulate(
    out: Path = typer.Option(..., help="Dataset folder (re-running it resumes an interrupted run)."),
    n: int | None = typer.Option(None, min=1, help="Number of subjects (not with --from-ct)."),
    seed: int = typer.Option(..., min=0, help="Dataset seed (subject seeds derive from it)."),
    from_ct: Path | None = typer.Option(
        None,
        help="Instead of phantoms: a folder of CT + label maps (<id>.nii.gz + <id>_labels.nii.gz, or manifest.csv); "
        "one subject per femur.",
    ),
    femur_labels: str | None = typer.Option(
        None, help="With --from-ct: side=label pairs (default TotalSegmentator v2: right=76,left=75)."
    ),
    keep_sides: bool = typer.Option(False, "--keep-sides", help="With --from-ct: keep left femurs left (no mirror)."),
    geometry: GeometryKind = typer.Option(
        "orthogonal", help="orthogonal (AP 0, LAT 90), generalized (+/-30 deg) or mixed (half each)."
    ),
    shapes: str = typer.Option(
        "mixed", help="Femurs: phantom (parametric), ssm (real-subject shape model) or mixed (half each)."
    ),
    preset: str = typer.Option("lite", help="Grid and detector preset: paper, lite or tiny."),
    mode: str = typer.Option(
        "line_integral",
        help="line_integral, poisson, polychromatic or clinical (a processed clinic image, also as AP.dcm, LAT.dcm).",
    ),
    scene: str = typer.Option(
        "body",
        help="What radiographs project: body (the patient around the CT, no box edges), grid (the CT alone) "
        "or femur (the femur alone in air).",
    ),
    photons: float = typer.Option(1e5, help="Photons per pixel (mode poisson)."),
    kvp: float = typer.Option(80.0, help="Tube voltage, kV (mode polychromatic)."),
    aluminium_mm: float = typer.Option(2.5, help="Filtration, mm Al (mode polychromatic)."),
    pose_angle_deg: float = typer.Option(
        10.0, help="Largest flexion, abduction and rotation of the leg, deg (the paper: 10; not with --from-ct)."
    ),
    pose_shift_mm: float = typer.Option(
        3.0, help="Largest shift of the patient along each axis, mm (the default: 3; not with --from-ct)."
    ),
    bone_contrast: float = typer.Option(
        1.0,
        help="Largest bone contrast factor in [1, 4]: each subject's radiographs rendered with bone (above "
        "350 HU) attenuating that many times as much, uniform in [1, this] (not with --from-ct).",
    ),
    shape_spread: float = typer.Option(
        1.0,
        help="Standard deviation of the shape-model femurs' mode weights, in (0, 3]: 1 the model's population, "
        "above 1 more femurs near its +-3 sd edges (not with --from-ct).",
    ),
    off_model_mm: float = typer.Option(
        0.0,
        help="Move each shape-model femur off the model by this root mean square along its normals, mm, in "
        "[0, 3]: a femur of another cohort is about 1 mm off (not with --from-ct).",
    ),
    uniform_femur: bool = typer.Option(
        False,
        "--uniform-femur",
        help="Render each subject's femur at one CT number (uniform in 300-1500 HU), as a projector given a "
        "voxelised femur mesh would; the CT written is unchanged (not with --from-ct).",
    ),
    workers: int = typer.Option(1, min=1, help="Parallel worker processes."),
) -> None:
    """Make a dataset: CT + femur labels, AP and LAT radiographs, masks, geometry files, split."""
    with _reporting_errors():
        from biplanar import api  # lazy: CLI start-up time

        rendering: dict[str, Any] = {
            "geometry": geometry,
            "preset": preset,
            "mode": mode,
            "scene": scene,
            "photons": photons,
            "kvp": kvp,
            "aluminium_mm": aluminium_mm,
            "workers": workers,
        }
        if from_ct is not None:
            if n is not None:
                raise InputError("--n: not used with --from-ct (one subject per femur of each CT)")
            if (pose_angle_deg, pose_shift_mm) != (10.0, 3.0):
                raise InputError(
                    "--pose-angle-deg, --pose-shift-mm: not used with --from-ct (its femurs keep their CT's pose)"
                )
            if bone_contrast != 1.0:
                raise InputError("--bone-contrast: not used with --from-ct (its radiographs use hu_to_mu as it is)")
            if shape_spread != 1.0 or off_model_mm != 0.0:
                raise InputError("--shape-spread, --off-model-mm: not used with --from-ct (its femurs are the CT's)")
            if uniform_femur:
                raise InputError("--uniform-femur: not used with --from-ct (its femurs keep their CT numbers)")
            made = api.simulate_from_ct(
                from_ct, out, seed, femur_labels=femur_labels, keep_sides=keep_sides, **rendering
            )
            for name, reason in made.skipped.items():
                typer.echo(f"skipped {name}: {reason}", err=True)
            typer.echo(
                f"wrote {len(made.written)} subjects to {out}, {len(made.kept)} already there, "
                f"{len(made.skipped)} femurs skipped"
            )
            return
        if n is None or femur_labels is not None or keep_sides:
            raise InputError("--n is needed (and --femur-labels, --keep-sides only go with --from-ct)")
        summary = api.simulate(
            out,
            n,
            seed,
            shapes=shapes,
            pose_angle_deg=pose_angle_deg,
            pose_shift_mm=pose_shift_mm,
            bone_contrast=bone_contrast,
            shape_spread=shape_spread,
            off_model_mm=off_model_mm,
            uniform_femur=uniform_femur,
            **rendering,
        )
        typer.echo(f"wrote {len(summary.written)} subjects to {out}, {len(summary.skipped)} already there")


@app.command()
def train(
    config: str = typer.Option(..., help="Config YAML, or a preset name: paper, lite, tiny."),
    out: Path = typer.Option(..., help="Run folder: checkpoints, metrics.csv, TensorBoard logs."),
    data: list[Path] | None = typer.Option(
        None, help="A `biplanar simulate` dataset folder; repeat it to train on several together."
    ),
    on_the_fly: int | None = typer.Option(None, min=1, help="Instead of --data: N fresh subjects per epoch."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out exactly."),
    epochs: int | None = typer.Option(None, min=1, help="Override the config's epochs."),
    init: Path | None = typer.Option(
        None, help="Fine-tune: start from this checkpoint's weights (e.g. the bundled model.pt); same network."
    ),
) -> None:
    """Train the registration network (also under torchrun; Ctrl-C checkpoints, --resume continues)."""
    with _reporting_errors():
        from biplanar import api  # lazy: CLI start-up time

        with _reporting_interruption():
            result = api.train(
                config, out, data=data or None, on_the_fly=on_the_fly, resume=resume, epochs=epochs, init=init
            )
        if os.environ.get("RANK", "0") != "0":  # under torchrun, one summary
            return
        typer.echo(_trained(result, out))


@app.command("train-baseline")
def train_baseline(
    method: BaselineMethod = typer.Option(..., help="kasten (direct label regression) or sdm (deformation model)."),
    config: str = typer.Option("lite", help="Config YAML, or a preset name: paper, lite, tiny (sets the sizes)."),
    data: Path = typer.Option(..., help="A `biplanar simulate` dataset folder."),
    out: Path = typer.Option(..., help="Run folder: checkpoints, metrics.csv, TensorBoard logs (sdm: its SDM)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out exactly."),
    epochs: int | None = typer.Option(None, min=1, help="Override the config's epochs."),
) -> None:
    """Train a learned baseline of Table 1 (Ctrl-C checkpoints, --resume continues)."""
    with _reporting_errors():
        from biplanar import api  # lazy: CLI start-up time

        with _reporting_interruption():
            result = api.train_baseline(method, data, out, config=config, resume=resume, epochs=epochs)
        typer.echo(_trained(result, out, f"{method} for "))


@app.command("train-pose")
def train_pose(
    config: str = typer.Option(..., help="SOPI config YAML, or a preset name: sopi_tiny, sopi_lite, sopi_lumbar."),
    out: Path = typer.Option(..., help="Run folder: checkpoints, metrics.csv, TensorBoard logs."),
    network: PoseNetwork = typer.Option(..., help="rtpi (initial pose) or fine (the fine registration's encoders)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out exactly."),
    steps: int | None = typer.Option(None, min=1, help="Override the config's training.steps (the total)."),
    max_steps: int | None = typer.Option(None, min=1, help="Stop with a checkpoint after this many steps in total."),
    init: Path | None = typer.Option(
        None, help="Fine-tune: start from this SOPI checkpoint's weights (e.g. the bundled rtpi.pt); same network."
    ),
) -> None:
    """Train a SOPI pose network on simulated pairs (Ctrl-C checkpoints, --resume continues)."""
    with _reporting_errors():
        from biplanar import api  # lazy: CLI start-up time

        with _reporting_interruption():
            result = api.train_pose(config, out, network, resume=resume, steps=steps, max_steps=max_steps, init=init)
        best = _best(result.best_val_loss, 4)
        typer.echo(
            f"trained {network} for {result.global_step} steps; best validation loss {best}; checkpoints in {out}"
        )


@app.command()
def register(
    geometry: Path | None = typer.Option(
        None,
        help="geometry.json with views AP and LAT (default: the DICOM radiographs' tags; given, it overrides them).",
    ),
    ap: Path = typer.Option(..., help="AP radiograph (.dcm, .npy, .tif, .png), any detector."),
    lat: Path = typer.Option(..., help="LAT radiograph (.dcm, .npy, .tif, .png), any detector."),
    out: Path = typer.Option(..., help="Output folder (must be new or empty)."),
    model: Path | None = typer.Option(
        None,
        help="Checkpoint from `biplanar train` (default: the bundled lite model, or lite_alone for a bone in air).",
    ),
    atlas: Path | None = typer.Option(None, help="Atlas folder (default: the model's own atlas)."),
    ap_mask: Path | None = typer.Option(None, help="2D femur mask of the AP radiograph (default: segmented)."),
    lat_mask: Path | None = typer.Option(None, help="2D femur mask of the LAT radiograph (default: segmented)."),
    truth_labels: Path | None = typer.Option(None, help="True femur labels on the atlas grid: adds Dice, ASSD..."),
    refine: int | None = typer.Option(
        None,
        min=0,
        help="Test-time optimisation iterations after the network (0: none; default: 50 when the "
        "network's result is flagged by the quality check or its silhouette Dice is below 0.985, else 25 "
        "when a view is more than 22.5 deg "
        "from AP / lateral, else none).",
    ),
    estimate_pose: bool = typer.Option(
        False,
        "--estimate-pose",
        help="Before the network, correct each view's angle by a rigid registration "
        "of the atlas to its radiograph; writes geometry_corrected.json.",
    ),
    pose_method: CorrectionMethod = typer.Option("opt-gc", help="Similarity of --estimate-pose's search."),
    side: Side | None = typer.Option(
        None, help="The femur's side (default: the DICOM Image Laterality / Laterality, else right)."
    ),
    intensity: Intensity = typer.Option(
        "auto",
        help="Pixel values: line integrals, or transmission (-log(I / I_air)); auto: DICOM tags or the image.",
    ),
    air_level: float | None = typer.Option(
        None, help="Unattenuated level of transmission images, in the file's values (default: estimated)."
    ),
    segmentation_model: Path | None = typer.Option(
        None, help="2D femur segmentation checkpoint used without masks (default: the bundled one)."
    ),
    mesh_format: MeshFormat = typer.Option(
        "stl", help="Format of surface.<ext> and label_surface.<ext> (PLY, OBJ, VTK keep the vertex order)."
    ),
) -> None:
    """Register the atlas to two radiographs (DICOM or arrays); writes the outputs of docs/contract.md section 6."""
    options = locals()
    with _reporting_errors():
        from biplanar import api  # lazy: CLI start-up time

        result = api.register(**options)
        scores = {key: result.report[key] for key in ("dice", "assd_mm") if result.report.get(key) is not None}
        summary = ", ".join(f"{key} {value:.3f}" for key, value in scores.items())
        typer.echo(f"wrote {out} in {result.report['timings_s']['total']:.1f} s" + (f" ({summary})" if summary else ""))


@app.command()
def segment(
    image: Path = typer.Option(..., help="Radiograph (.dcm, .npy, .tif, .png), any detector."),
    out: Path = typer.Option(..., help="Mask to write (.png, 255 = femur), on the radiograph's pixels."),
    geometry: Path | None = typer.Option(None, help="geometry.json with the view (default: the DICOM tags)."),
    view: str = typer.Option("AP", help="The view's name in the geometry: AP or LAT."),
    side: Side | None = typer.Option(None, help="The femur's side (default: the DICOM laterality, else right)."),
    intensity: Intensity = typer.Option("auto", help="Pixel values: line integrals or transmission."),
    air_level: float | None = typer.Option(None, help="Unattenuated level of a transmission image."),
    segmentation_model: Path | None = typer.Option(None, help="Segmentation checkpoint (default: bundled)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out."),
) -> None:
    """Segment the femur on one radiograph with the bundled 2D network (what register does without masks)."""
    options = locals()
    with _reporting_errors():
        from biplanar import api  # lazy: CLI start-up time

        mask = api.segment(**options)
        typer.echo(f"wrote {out} ({int(mask.sum())} femur pixels of {mask.size})")


@app.command()
def preprocess(
    ct: Path = typer.Option(..., help="CT volume in HU (.nii/.nii.gz)."),
    labels: Path = typer.Option(..., help="Label map on the CT's grid (e.g. TotalSegmentator's)."),
    label: int = typer.Option(..., help="Label value of the femur to extract."),
    side: Side = typer.Option(..., help="Which femur it is; left femurs are mirrored to right."),
    out: Path = typer.Option(..., help="Output folder: ct.nii.gz, labels.nii.gz, frame.json."),
    preset: str = typer.Option("lite", help="Output grid preset: paper, lite or tiny."),
) -> None:
    """Bring one femur of a real CT into the atlas frame and grid (the paper's preprocessing)."""
    with _reporting_errors():
        from biplanar import api  # lazy: CLI start-up time

        result = api.preprocess(ct, labels, label, side, out, preset=preset)
        axes = result.frame.axes
        typer.echo(
            f"wrote {out} (head radius {axes.head_radius_mm:.1f} mm, "
            f"neck-shaft angle {axes.neck_shaft_angle_deg:.1f} deg)"
        )


@app.command()
def demo(
    out: Path = typer.Option(Path("biplanar_demo"), help="Demo folder (must be new or empty)."),
    model: Path | None = typer.Option(None, help="Checkpoint (default: the bundled lite model)."),
    seed: int | None = typer.Option(None, min=0, help="Case seed of the patient (default: the held-out demo seed)."),
    clinical: bool = typer.Option(
        False,
        "--clinical",
        help="Also register the patient from two clinic DICOM files alone "
        "(transmission, 448 x 320 at 0.6 mm, geometry from the tags, no masks).",
    ),
) -> None:
    """Simulate a held-out patient, register the atlas to its AP + LAT radiographs, score and draw it."""
    with _reporting_errors():
        from rich.console import Console  # lazy: CLI start-up time

        from biplanar import api  # lazy: CLI start-up time

        result = api.run_demo(out, model=model, seed=seed, clinical=clinical)
        console = Console()
        for table in api.demo_summary_tables(result):
            console.print(table)
        extra = "registration_clinical/, " if clinical else ""
        typer.echo(f"wrote {out}: inputs/, registration/, {extra}figure.png, demo.json")
        typer.echo(f"report: {result.report_page} (open it in a browser)")


@app.command()
def evaluate(
    model: Path = typer.Option(..., help="Checkpoint from `biplanar train`."),
    data: Path = typer.Option(..., help="A `biplanar simulate` dataset folder."),
    out: Path = typer.Option(..., help="Output folder (must be new or empty): cases.csv, summary.json/.md."),
    split: str = typer.Option("test", help="Split to score: train, val, test or all (every subject)."),
    refine: int = typer.Option(0, min=0, help="Test-time refinement iterations (adds a 'refined' stage)."),
    limit: int | None = typer.Option(None, min=1, help="Score only the first K cases of the split."),
) -> None:
    """Score a model on a dataset split: Dice, Jaccard, ASSD, HD95, SSIM, time, per stage."""
    with _reporting_errors():
        from biplanar import api  # lazy: CLI start-up time

        result = api.evaluate(model, data, out, split=split, refine=refine, limit=limit)
        typer.echo((result.out_dir / "summary.md").read_text().rstrip())


@app.command()
def pose(
    ct: Path = typer.Option(..., help="CT volume (.nii/.nii.gz), HU unless --units mu."),
    geometry: Path = typer.Option(..., help="geometry.json with the views of the radiographs."),
    ap: Path = typer.Option(..., help="AP radiograph (.npy, .tif, .png, .dcm), line-integral-like (bone bright)."),
    out: Path = typer.Option(
        ..., help="Output folder (new or empty): pose.json, geometry_corrected.json, overlay_<view>.png."
    ),
    lat: Path | None = typer.Option(None, help="LAT radiograph (optional)."),
    method: PoseMethod = typer.Option("opt-gc", help="Optimisation baseline, or SOPI (+ Opt-GC refinement)."),
    init_pose: Path | None = typer.Option(None, help="JSON with the starting 4x4 'matrix' (e.g. a pose.json)."),
    units: VolumeUnits = typer.Option("hu", help="CT values: HU, or mu in 1/mm."),
    mu_water_per_mm: float = typer.Option(0.02, "--mu-water", help="Attenuation of water, 1/mm (for HU volumes)."),
    levels_mm: str = typer.Option(
        "12,6", "--levels", help="Resolution levels, mm at the CT centre, coarse to fine (comma-separated)."
    ),
    evaluations: int = typer.Option(150, min=0, help="CMA-ES evaluations per level."),
    refine_steps: int = typer.Option(10, min=0, help="L-BFGS iterations at the finest level."),
    sigma_deg: float = typer.Option(5.0, min=1e-6, help="CMA-ES initial rotation step, deg (about the initial error)."),
    sigma_mm: float = typer.Option(10.0, min=1e-6, help="CMA-ES initial translation step, mm."),
    rtpi: Path | None = typer.Option(
        None,
        help="SOPI RTPI checkpoint (methods sopi, sopi+opt; default: the "
        "bundled sopi_lite networks, femur, 112x80 images at 1.86 mm).",
    ),
    fine: Path | None = typer.Option(None, help="SOPI fine-registration checkpoint (with --rtpi)."),
    turns: int = typer.Option(
        8, min=1, help="sopi+opt: refine from this many starts turned about the CT's long axis, keep the best."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Write into an --out that holds files (replacing those of the same names)."
    ),
) -> None:
    """Estimate the rigid pose of a CT to one or two radiographs; writes the pose and a corrected geometry."""
    options = locals()
    with _reporting_errors():
        from biplanar import api  # lazy: CLI start-up time

        try:
            options["levels_mm"] = tuple(float(size) for size in levels_mm.split(","))
        except ValueError as error:
            raise InputError(f"--levels/--evaluations/--sigma: {error}") from None
        report = api.estimate_pose(**options)
        params = report.document["params"]
        rotation = ", ".join(f"{value:.2f}" for value in params["rotation_deg"])
        translation = ", ".join(f"{value:.2f}" for value in params["translation_mm"])
        typer.echo(
            f"wrote {out}: rotation ({rotation}) deg, translation ({translation}) mm, "
            f"{report.document['timings_s']['total']:.1f} s"
        )


def _names(values: list[str] | None) -> tuple[str, ...] | None:
    """Repeated and/or comma-separated option values as a tuple (``None`` when not given)."""
    return None if not values else tuple(name.strip() for value in values for name in value.split(",") if name.strip())


@app.command("evaluate-pose")
def evaluate_pose(
    out: Path = typer.Option(..., help="Output folder: cases.csv, summary.md (rewritten after each dataset/range)."),
    datasets: list[str] | None = typer.Option(
        None, help="lumbar and/or femur (repeat or comma-separate; default both)."
    ),
    ranges: list[str] | None = typer.Option(None, help="Pose ranges small and/or wide (default both)."),
    cases: int = typer.Option(10, "--n", min=1, help="Cases per dataset and range."),
    seed: int = typer.Option(0, min=0, help="Seed of the true poses."),
    methods: list[str] | None = typer.Option(
        None, help="opt-gc, opt-ncc, opt-ngi, sopi, sopi+opt (default: the three optimisation baselines)."
    ),
    rtpi: list[str] | None = typer.Option(
        None,
        help="SOPI RTPI checkpoint for methods sopi, sopi+opt: DATASET=PATH "
        "(repeat per dataset) or PATH (every dataset).",
    ),
    fine: list[str] | None = typer.Option(None, help="SOPI fine-registration checkpoint, as --rtpi."),
    evaluations: int = typer.Option(150, min=0, help="CMA-ES evaluations per level."),
    refine_steps: int = typer.Option(10, min=0, help="L-BFGS iterations at the finest level."),
    max_levels: int | None = typer.Option(None, min=1, help="Use only the coarsest N levels of each dataset."),
    turns: int = typer.Option(
        8, min=1, help="sopi+opt: refine from this many starts turned about the CT's long axis, keep the best."
    ),
    appearance: str = typer.Option(
        "line-integral", help="Radiographs: line-integral (noise-free DRRs) or clinical (clinic-processed DRRs)."
    ),
) -> None:
    """Rigid pose accuracy (SOPI's Table 1 style) on the real lumbar CT and femur phantoms."""
    options = locals()
    with _reporting_errors():
        from biplanar import api  # lazy: CLI start-up time

        names = {"datasets": _names(datasets), "ranges": _names(ranges), "methods": _names(methods)}
        rows = api.evaluate_pose(**{**options, **names})
        typer.echo((out / "summary.md").read_text().rstrip())
        typer.echo(f"wrote {out}: cases.csv ({len(rows)} rows), summary.md")


@app.command()
def experiments(
    out: Path = typer.Option(..., help="Experiments folder (re-running the command resumes it)."),
    budget: ExperimentBudget = typer.Option(..., help="tiny (a plumbing check), lite (CPU-sized) or paper."),
    model_full: Path | None = typer.Option(None, help="Reuse this full-model checkpoint instead of training one."),
    model_generalized: Path | None = typer.Option(
        None, help="Reuse this checkpoint as the Fig. 4 model (trained on generalized geometries)."
    ),
    docs: bool = typer.Option(False, "--docs", help="Also copy results.md and the plots into --docs-dir."),
    docs_dir: Path = typer.Option(Path("docs"), help="Where --docs copies: results.md and img/results_*.png."),
    workers: int = typer.Option(1, min=1, help="Parallel processes simulating the datasets."),
    stage: str | None = typer.Option(
        None,
        help="Run only this stage (e.g. train_kasten), once the stages it needs "
        "are complete, and write no report: independent stages can so run "
        "in parallel; the whole command then reuses them.",
    ),
    sopi_rtpi: list[str] | None = typer.Option(
        None,
        help="SOPI RTPI checkpoint, DATASET=PATH (repeat per dataset: "
        "femur, lumbar) or PATH: the pose study also scores "
        "sopi and sopi+opt on those datasets.",
    ),
    sopi_fine: list[str] | None = typer.Option(None, help="SOPI fine-registration checkpoint, as --sopi-rtpi."),
) -> None:
    """Reproduce the paper's Tables 1-2 and Figs. 3-4 and SOPI's Table 1: results.md, CSVs and plots in --out."""
    with _reporting_errors():
        from biplanar import api  # lazy: CLI start-up time

        with _reporting_interruption("run the same command again to resume"):
            result = api.run_experiments(
                out,
                budget,
                model_full=model_full,
                model_generalized=model_generalized,
                docs_dir=docs_dir if docs else None,
                workers=workers,
                stage=stage,
                sopi_rtpi=sopi_rtpi,
                sopi_fine=sopi_fine,
            )
        if stage is not None:
            typer.echo(f"stage {stage}: {'done' if stage in result.ran else 'complete before'}")
            return
        typer.echo(f"wrote {result.results_md} ({len(result.ran)} stages run, {len(result.skipped)} reused)")


GC_GENERATION0_THRESHOLD = 100_000  # allocations between generation-0 collections (CPython's default: 700)


def main() -> None:
    """Console entry point, with the garbage collector set for a command's start and end.

    - Generation-0 collections every :data:`GC_GENERATION0_THRESHOLD` allocations instead of 700:
      importing torch and the rest creates hundreds of thousands of long-lived objects, which the
      default threshold scans again and again (about 0.15 s of ``register``'s start-up). Cycles are
      still collected, less often.
    - At exit every object is frozen (:func:`gc.freeze`), so the interpreter's final collections
      skip them: with torch loaded they take 0.3-0.6 s, after the outputs are written.

    ``benchmarks/bench_register.py`` times ``register`` through this entry point.
    """
    gc.set_threshold(GC_GENERATION0_THRESHOLD, *gc.get_threshold()[1:])
    try:
        app(prog_name="biplanar")
    finally:
        gc.freeze()


if __name__ == "__main__":
    main()
