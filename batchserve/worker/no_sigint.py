"""A Dask preload for the worker processes of the local cluster batchserve starts: they ignore SIGINT,
and say nothing on the terminal once they have closed.

Ctrl-C in a terminal sends SIGINT to every process of the foreground group, the worker processes
included. Each raised KeyboardInterrupt in its event loop and died mid-task: about 30 lines of
traceback per worker and nanobind's leak report for every live drift sketch, on the user's
terminal, before batchserve's own one line. The client is the one that acts on Ctrl-C: it closes the
commit fence, writes the ``interrupted`` manifest and closes the cluster, which stops these workers
in order. A worker closed while a task thread still held drift sketches printed nanobind's leak
report (one line per live object) as its interpreter finalized; by ``dask_teardown`` the worker has
closed and reported all it will report, so its stderr goes to the null device from there.
Loaded as a preload (``dask_setup`` runs in each worker process as it starts, restarts
included), never on an existing cluster's workers (``--scheduler``), which are not ours to change.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

__all__ = ["dask_setup", "dask_teardown"]


def dask_setup(worker: Any) -> None:
    """Ignore SIGINT in this worker process (its main thread runs the event loop that calls this)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def dask_teardown(worker: Any) -> None:
    """The worker has closed: what its interpreter prints while finalizing is noise on a user's terminal."""
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, 2)
        os.close(fd)
    except OSError:  # nowhere to send it: finalizing as it is
        pass
