"""Atomic folders: all or nothing, and the partial folders a killed run leaves are recognised."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from biplanar.errors import InputError
from biplanar.io.atomic import PARTIAL_SUFFIX, STALE_AFTER_S, atomic_folder, remove_partial_folders


def dead_pid() -> int:
    """The pid of a process that has exited."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_folder_appears_whole_or_not_at_all(tmp_path):
    with atomic_folder(tmp_path / "out") as partial:
        (partial / "a.txt").write_text("a")
        assert not (tmp_path / "out").exists()
    assert (tmp_path / "out" / "a.txt").read_text() == "a"
    with pytest.raises(RuntimeError), atomic_folder(tmp_path / "other") as partial:
        (partial / "b.txt").write_text("b")
        raise RuntimeError("stopped half-way")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]


def test_replace_false_refuses_a_folder_with_something_in_it(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "kept.txt").write_text("mine")
    with pytest.raises(InputError, match="not an empty folder"), atomic_folder(tmp_path / "out", replace=False):
        pass
    assert (tmp_path / "out" / "kept.txt").read_text() == "mine"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]


def test_partials_of_dead_or_old_runs_are_removed_and_a_live_run_s_kept(tmp_path):
    dead = tmp_path / f".out.{dead_pid()}{PARTIAL_SUFFIX}"
    live = tmp_path / f".out.{os.getppid()}{PARTIAL_SUFFIX}"  # the parent process: alive
    old = tmp_path / f".out.{os.getppid()}0{PARTIAL_SUFFIX}"
    other = tmp_path / f".another.{dead_pid()}{PARTIAL_SUFFIX}"
    for folder in (dead, live, old, other):
        folder.mkdir()
    long_ago = time.time() - STALE_AFTER_S - 60.0
    os.utime(old, (long_ago, long_ago))
    remove_partial_folders(tmp_path, "out")
    assert not dead.exists() and not old.exists()
    assert live.exists() and other.exists()  # another run's, and another name's
    with atomic_folder(tmp_path / "another"):  # cleans its own name's leftovers first
        assert not other.exists()
