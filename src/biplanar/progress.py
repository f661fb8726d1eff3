"""Progress on stderr: the rich bar of a long loop and the one-line stage messages of a command.

Every progress display of the package comes from here, so that they look alike and go to the same
stream: :func:`progress_bar` (a counted bar), :func:`ticker` (advance it by one) and
:func:`print_stage` (``"<command>: <message>"`` lines such as ``register: running the network``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def progress_bar(
    enabled: bool, *, elapsed: bool = False, remaining: bool = True, fields: Sequence[str] = ()
) -> Progress:
    """A rich progress bar on stderr: ``description ━━━━ done/total [fields] [elapsed] [remaining]``.

    Use it as a context (``with progress_bar(...) as bar: task = bar.add_task(description, total=n)``)
    or call ``start()`` / ``stop()``.

    Args:
        enabled: draw it. A disabled bar is a no-op context: its tasks still count, nothing is drawn.
        elapsed: a column of the time since the start.
        remaining: a column of the estimated time left.
        fields: templates of text columns after the count, e.g. ``"loss {task.fields[loss]:.4f}"``
            (each task then needs that field: ``add_task(..., loss=float("nan"))``).
    """
    columns: list[ProgressColumn] = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
    columns += [TextColumn(template) for template in fields]
    if elapsed:
        columns.append(TimeElapsedColumn())
    if remaining:
        columns.append(TimeRemainingColumn())
    return Progress(*columns, console=Console(stderr=True), disable=not enabled)


def ticker(bar: Progress, description: str, total: int) -> Callable[[], None]:
    """Add a task of ``total`` steps to ``bar``; returns the call that advances it by one."""
    task = bar.add_task(description, total=total)
    return lambda: bar.advance(task)


def print_stage(command: str, enabled: bool, message: str) -> None:
    """Print ``"<command>: <message>"`` on stderr (flushed) when ``enabled``: a command's stage."""
    if enabled:
        print(f"{command}: {message}", file=sys.stderr, flush=True)
