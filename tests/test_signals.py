"""Interrupting ``register`` and ``pose`` (issue 18): Ctrl-C or SIGKILL never leaves a half-written ``--out``.

Each case starts ``python -m biplanar register`` (the bundled lite model on a simulated lite case) or
``python -m biplanar pose --method opt-gc`` (the small lumbar CT, a small evaluation budget) as a
subprocess and signals it at fixed delays after the start (during the imports, the loading, the
computation). After SIGINT the command exits non-zero, ``--out`` does not exist or is complete,
and no ``.<out>.<pid>.partial`` folder is left. After SIGKILL a partial folder may be left; the
next run into the same ``--out`` succeeds and removes it. A run that finished before its signal
must have exited 0 with a complete ``--out``. No randomness: fixed delays, fixed seeds.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from biplanar.data.simulate import SimulationConfig, simulate_case
from biplanar.geometry.presets import biplanar_pair
from biplanar.geometry.transforms import rigid_matrix
from biplanar.io.geometry_file import read_geometry, write_geometry
from biplanar.io.images import write_image
from biplanar.io.volumes import read_volume
from biplanar.layers.prost import ProST
from biplanar.physics.attenuation import hu_to_mu
from biplanar.registration.outputs import output_files

SMALL_CT = Path(__file__).parent / "data" / "real_ct" / "lumbar_ct_small.nii.gz"
POSE_FILES = ("pose.json", "geometry_corrected.json", "overlay_AP.png", "overlay_LAT.png")
SIGINT_DELAYS_S = (0.5, 2.0, 4.0)
SIGKILL_DELAY_S = 3.0
RUN_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def register_inputs(tmp_path_factory) -> Path:
    """A simulated lite case (grid scene) as register's input files: geometry, AP and LAT, their masks."""
    folder = tmp_path_factory.mktemp("register_inputs")
    case = simulate_case(7, SimulationConfig(preset="lite", scene="grid"))
    for name in ("AP", "LAT"):
        write_image(folder / f"{name}.npy", case.radiographs[name])
        write_image(folder / f"{name}_mask.npy", case.masks[name])
    write_geometry(folder / "geometry.json", case.views)
    return folder


@pytest.fixture(scope="module")
def pose_inputs(tmp_path_factory) -> Path:
    """A geometry file and AP + LAT DRRs of the small lumbar CT at a known pose (64 x 64 at 6 mm)."""
    folder = tmp_path_factory.mktemp("pose_inputs")
    data, grid = read_volume(SMALL_CT)
    mu = hu_to_mu(torch.from_numpy(data))[None, None]
    write_geometry(folder / "geometry.json", biplanar_pair(image_shape=(64, 64), pixel_spacing_mm=(6.0, 6.0)))
    views = read_geometry(folder / "geometry.json", default_isocenter_mm=grid.centre_world)
    pose = rigid_matrix(
        torch.tensor([math.radians(3.0), math.radians(-2.0), 0.0, 5.0, -6.0, 4.0], dtype=torch.float64),
        torch.as_tensor(grid.centre_world),
    )
    with torch.no_grad():
        for name, view in views.items():
            image = ProST(view, grid, 256, margin_mm=60.0)(mu, pose[None].float())[0, 0].numpy()
            np.save(folder / f"{name}.npy", image)
    return folder


def register_command(inputs: Path, out: Path) -> list[str]:
    return [
        *("register", "--geometry", str(inputs / "geometry.json"), "--ap", str(inputs / "AP.npy")),
        *("--lat", str(inputs / "LAT.npy"), "--ap-mask", str(inputs / "AP_mask.npy")),
        *("--lat-mask", str(inputs / "LAT_mask.npy"), "--out", str(out)),
    ]


def pose_command(inputs: Path, out: Path) -> list[str]:
    return [
        *("pose", "--ct", str(SMALL_CT), "--geometry", str(inputs / "geometry.json")),
        *("--ap", str(inputs / "AP.npy"), "--lat", str(inputs / "LAT.npy"), "--out", str(out)),
        *("--method", "opt-gc", "--evaluations", "30", "--refine-steps", "2"),
    ]


def start(arguments: list[str]) -> subprocess.Popen:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "biplanar", *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
    )


def signal_after(arguments: list[str], signal_number: int, delay_s: float) -> tuple[int, bool, str]:
    """Run ``biplanar <arguments>``, send ``signal_number`` ``delay_s`` after the start; return its exit
    code, whether it was still running when signalled, and its stderr."""
    process = start(arguments)
    started = time.monotonic()
    try:
        while process.poll() is None and time.monotonic() - started < delay_s:
            time.sleep(0.02)
        running = process.poll() is None
        if running:
            process.send_signal(signal_number)
        _, stderr = process.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, running, stderr


def partials(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.*.partial"))


def assert_absent_or_complete(out: Path, files: tuple[str, ...]) -> None:
    if out.exists():
        assert set(files) <= {path.name for path in out.iterdir()}, sorted(out.iterdir())


def check_sigint(
    arguments: list[str], out: Path, files: tuple[str, ...], delay_s: float, signal_number: int = signal.SIGINT
) -> None:
    """SIGINT (or SIGTERM, which the CLI turns into the same interruption) ``delay_s`` after the start."""
    code, running, stderr = signal_after(arguments, signal_number, delay_s)
    if code == 0:  # finished before the signal, or the signal landed in its shutdown
        assert out.is_dir(), stderr[-2000:]
    else:
        # 130 with the command's one line; death by the signal itself when it lands while Python
        # imports or shuts down (the command's work then either had not started or had finished).
        assert running and code in (130, -signal_number), stderr[-2000:]
        if code == 130:
            assert "biplanar: interrupted" in stderr.splitlines()[-1], stderr[-2000:]
    assert_absent_or_complete(out, files)
    assert partials(out) == [], "a partial folder was left after SIGINT"


def check_sigkill_then_rerun(arguments: list[str], out: Path, files: tuple[str, ...]) -> None:
    code, running, stderr = signal_after(arguments, signal.SIGKILL, SIGKILL_DELAY_S)
    # 0: finished before the kill, or while it was sent (a command of about SIGKILL_DELAY_S: the
    # check that it was running and the kill race); its outputs must then be complete.
    assert code == 0 or (running and code == -signal.SIGKILL), stderr[-2000:]
    assert code != 0 or out.is_dir(), stderr[-2000:]
    assert_absent_or_complete(out, files)
    if out.exists():  # finished before the kill: start again from nothing
        for path in out.iterdir():
            path.unlink()
        out.rmdir()
    # What a kill while the outputs are written leaves (the killed run's pid is dead): the rerun removes it.
    if not partials(out):
        left = out.parent / f".{out.name}.{dead_pid()}.partial"
        left.mkdir()
        (left / "report.json").write_text("{")
    rerun = subprocess.run(
        [sys.executable, "-m", "biplanar", *arguments],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert set(files) <= {path.name for path in out.iterdir()}
    assert partials(out) == []


def dead_pid() -> int:
    """A pid that is no live process: one past the kernel's pid range."""
    return int(Path("/proc/sys/kernel/pid_max").read_text()) + 1


@pytest.mark.slow
@pytest.mark.parametrize("delay_s", SIGINT_DELAYS_S)
def test_register_interrupted_by_sigint_leaves_no_partial_output(register_inputs, tmp_path, delay_s):
    out = tmp_path / "out"
    check_sigint(register_command(register_inputs, out), out, output_files(), delay_s)


@pytest.mark.slow
def test_register_terminated_by_sigterm_cleans_up_as_after_ctrl_c(register_inputs, tmp_path):
    out = tmp_path / "out"
    check_sigint(register_command(register_inputs, out), out, output_files(), 3.0, signal.SIGTERM)


@pytest.mark.slow
def test_register_killed_then_rerun_completes_and_removes_the_partial(register_inputs, tmp_path):
    out = tmp_path / "out"
    check_sigkill_then_rerun(register_command(register_inputs, out), out, output_files())


@pytest.mark.slow
@pytest.mark.parametrize("delay_s", SIGINT_DELAYS_S)
def test_pose_interrupted_by_sigint_leaves_no_partial_output(pose_inputs, tmp_path, delay_s):
    out = tmp_path / "out"
    check_sigint(pose_command(pose_inputs, out), out, POSE_FILES, delay_s)


@pytest.mark.slow
def test_pose_killed_then_rerun_completes_and_removes_the_partial(pose_inputs, tmp_path):
    out = tmp_path / "out"
    check_sigkill_then_rerun(pose_command(pose_inputs, out), out, POSE_FILES)
