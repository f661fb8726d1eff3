"""Worker processes that do not outlive their parent: the initialiser of
:func:`biplanar.data.simulate.in_workers`' process pool.

A pool worker left running when its parent is killed (``SIGKILL``, an out-of-memory kill, a closed
terminal) would go on simulating for nobody, holding its cores and memory. The kernel's parent-death
signal (Linux ``prctl(PR_SET_PDEATHSIG)``) does not reach a fork-server worker: its parent is the fork
server, which the workers themselves keep alive (they hold its "alive" pipe). So each worker watches
the process that started it through multiprocessing's parent sentinel (a pipe the parent holds: it
closes when the parent dies, however it dies) and exits at once when it closes. Ctrl-C reaches every
process of the terminal's group: a worker then stops quietly (the default action of ``SIGINT``) and
the main process reports the interruption.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from collections.abc import Callable

EXIT_PARENT_GONE = 1


def exit_with_parent() -> None:
    """Exit this process (``os._exit``, no clean-up) as soon as the multiprocessing parent that started
    it dies; a watching daemon thread. A process not started by multiprocessing is left alone."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        parent.join()  # returns when the parent's sentinel closes: the parent is gone
        os._exit(EXIT_PARENT_GONE)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def start_worker(setup: Callable[[], None]) -> None:
    """Pool initialiser: exit with the parent (:func:`exit_with_parent`), stop quietly on Ctrl-C (the
    default action of ``SIGINT`` instead of a ``KeyboardInterrupt`` traceback per worker), then ``setup()``.

    Args:
        setup: a module-level function (it is pickled to the worker), e.g. one that sets torch's threads.
    """
    exit_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    setup()
