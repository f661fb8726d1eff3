"""``simulate --workers``: the worker processes die with their parent, and the dataset resumes exactly
(issue 18). The parent is killed with SIGKILL, so nothing of it can clean up: the workers must go by
themselves (:mod:`biplanar.data.workers`)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")]

SUBJECTS = 6
WAIT_S = 120.0  # for the first subject (worker start-up included)
GONE_S = 10.0  # for the children once the parent is killed


def simulate_command(out: Path, workers: int) -> list[str]:
    """The ``biplanar simulate`` command of a small dataset (tiny preset, grid scenes)."""
    return [
        *(sys.executable, "-m", "biplanar", "simulate", "--out", str(out), "--n", str(SUBJECTS), "--seed", "3"),
        *("--preset", "tiny", "--scene", "grid", "--workers", str(workers)),
    ]


def children_of(pids: set[int]) -> set[int]:
    """Live processes whose parent is one of ``pids``, read from ``/proc``."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (command) ": state, ppid, ...
        if int(fields[1]) in pids and fields[0] != "Z":
            found.add(int(entry.name))
    return found


def descendants(pid: int) -> set[int]:
    """Every live descendant of ``pid`` (the fork server, the resource tracker, the workers)."""
    found: set[int] = set()
    layer = {pid}
    while layer:
        layer = children_of(layer) - found
        found |= layer
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (not a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def wait_for(condition, timeout_s: float) -> bool:
    """Poll ``condition()`` every 0.1 s until it holds (``True``) or ``timeout_s`` passes (``False``)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def ap_images(out: Path) -> dict[str, np.ndarray]:
    """Subject id -> its ``AP.npy``."""
    return {folder.name: np.load(folder / "AP.npy") for folder in sorted((out / "subjects").glob("case_*"))}


def test_workers_die_with_a_killed_parent_and_the_rerun_completes_the_dataset(tmp_path):
    out = tmp_path / "killed"
    parent = subprocess.Popen(simulate_command(out, 2), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        started = wait_for(lambda: any((out / "subjects").glob("case_*")), WAIT_S)
        workers = descendants(parent.pid)
    finally:
        parent.kill()  # SIGKILL: no handler, no finally, no clean-up in the parent
        parent.wait()
    assert started, "no subject was written"
    assert len(workers) >= 2, f"expected a fork server and workers, found {workers}"
    assert wait_for(lambda: not any(alive(pid) for pid in workers), GONE_S), (
        f"still alive {GONE_S} s after the parent was killed: {[pid for pid in workers if alive(pid)]}"
    )

    rerun = subprocess.run(simulate_command(out, 2), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    whole = tmp_path / "whole"
    uninterrupted = subprocess.run(simulate_command(whole, 1), capture_output=True, text=True, timeout=600)
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    resumed, reference = ap_images(out), ap_images(whole)
    assert sorted(resumed) == sorted(reference) and len(reference) == SUBJECTS
    assert all(np.array_equal(resumed[name], reference[name]) for name in reference)
    files = sorted(path.relative_to(out).as_posix() for path in out.rglob("*"))
    assert files == sorted(path.relative_to(whole).as_posix() for path in whole.rglob("*"))  # no debris
