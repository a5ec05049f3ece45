"""The console script's first code: signal handlers before anything heavy is imported.

Importing the CLI loads Dask, pyarrow and onnxruntime (most of a second). A SIGTERM from
cron or Airflow in that window used to kill the process without its one ``error:`` line;
here it becomes :class:`Interrupted` from the first instruction, and exits 128 + signal.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import NoReturn

from batchserve.errors import Interrupted

#: The multiprocessing resource tracker outlives a SIGKILLed run and warns about the
#: semaphores Dask's worker processes held: two lines of noise in a cron mail, about
#: nothing the user can act on. Child processes inherit this filter through the environment.
_QUIET_TRACKER = "ignore::UserWarning:multiprocessing.resource_tracker"


def _raise_interrupted(signum: int, _frame: object) -> None:
    name = signal.Signals(signum).name
    raise Interrupted(f"interrupted by {name} before scoring started; nothing was scored", signum=signum)


def main() -> NoReturn:
    """Console-script entry point."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _raise_interrupted)
    current = os.environ.get("PYTHONWARNINGS", "")
    if _QUIET_TRACKER not in current:
        os.environ["PYTHONWARNINGS"] = ",".join(w for w in (current, _QUIET_TRACKER) if w)
    try:
        from batchserve import cli
    except Interrupted as exc:
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(128 + exc.signum)
    cli.main()
    sys.exit(0)
