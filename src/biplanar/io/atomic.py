"""Writing files so that a reader never sees a half-written one: a temporary name, then rename."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from biplanar.errors import InputError


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffixes); rename it to ``path`` on success.

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".part{suffix}", dir=path.parent)
    os.close(handle)
    temporary_path = Path(temporary)
    try:
        yield temporary_path
        # mkstemp creates the file private (0600); give it the permissions of a normal new file.
        os.chmod(temporary_path, 0o666 & ~_current_umask())
        os.replace(temporary_path, path)
    finally:
        temporary_path.unlink(missing_ok=True)


PARTIAL_SUFFIX = ".partial"  # a folder being written: ``.<name>.<pid>.partial`` beside its final name
STALE_AFTER_S = 24 * 3600.0  # a partial folder this old is stale even if its pid lives (pid reuse)


@contextlib.contextmanager
def atomic_folder(folder: Path, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; on success it is renamed to ``folder``.

    Args:
        folder: the final folder.
        replace: an existing ``folder`` is removed first; ``False``: it may only be an empty
            folder (``InputError`` otherwise, and the temporary folder is removed).

    On an exception the temporary folder is removed and ``folder`` is left untouched.
    """
    folder = Path(folder)
    remove_partial_folders(folder.parent, glob.escape(folder.name))
    partial = folder.parent / f".{folder.name}.{os.getpid()}{PARTIAL_SUFFIX}"
    partial.mkdir(parents=True)
    try:
        yield partial
        if replace:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            require_empty_out_dir(folder)
            if folder.is_dir():
                folder.rmdir()
        os.rename(partial, folder)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def remove_partial_folders(parent: Path, name: str = "*") -> None:
    """Remove the temporary folders of :func:`atomic_folder` (for final names matching the glob
    ``name``) in ``parent`` that an interrupted run left: their writer's pid is no live process
    (or is this one), or they are older than :data:`STALE_AFTER_S`. Another live run's are kept."""
    for partial in Path(parent).glob(f".{name}.*{PARTIAL_SUFFIX}"):
        if _is_stale(partial):
            shutil.rmtree(partial, ignore_errors=True)


def _is_stale(partial: Path) -> bool:
    """Whether the partial folder ``.<name>.<pid>.partial`` was left by a process that is gone."""
    try:
        pid = int(partial.name[: -len(PARTIAL_SUFFIX)].rsplit(".", 1)[1])
        age_s = time.time() - partial.stat().st_mtime
    except (IndexError, ValueError, OSError):
        return False  # not one of ours, or gone already
    return pid == os.getpid() or age_s > STALE_AFTER_S or not _process_alive(pid)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: a permission check, no signal sent
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(text)


def require_empty_out_dir(out_dir: Path) -> None:
    """Refuse an output folder that is a file or a non-empty folder (results are never overwritten).

    Args:
        out_dir: the folder a command will create (or fill, when it exists and is empty).

    Raises:
        InputError: ``out_dir`` is a file or a folder with something in it.
    """
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InputError(f"{out_dir}: already exists and is not an empty folder (will not overwrite)")


def require_output_folder(out_dir: str | Path) -> None:
    """Refuse an output folder that is a file, or that cannot be made, before any work.

    Args:
        out_dir: the folder a command will write into (created when missing).

    Raises:
        InputError: ``out_dir`` is a file, or its nearest existing ancestor is not a writable folder.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: exists and is not a folder")
    if not out_dir.exists():
        require_creatable(out_dir)


def require_creatable(path: str | Path) -> None:
    """Refuse a new ``path`` whose nearest existing ancestor is not a writable folder.

    Raises:
        InputError: that ancestor is a file or not writable.
    """
    path = Path(path)
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(f"{path}: cannot write here: {ancestor} is not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise InputError(f"{path}: cannot write here: {ancestor} is not writable")
