"""SIGINT/SIGTERM become :class:`Interrupted` while tasks run, and are held while the final
manifest and ``_SUCCESS`` are written (a commit is never cut in half by a signal)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

from batchserve.errors import Interrupted

__all__ = ["signal_name", "raise_interrupted", "interrupting", "deferred"]


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


#: What an interrupted run's one line tells its user to do.
RESUME_ADVICE = "re-run with --resume to finish"


def raise_interrupted(advice: str = RESUME_ADVICE) -> AbstractContextManager[None]:
    """SIGINT/SIGTERM while tasks run: the line says what was kept and ends with ``advice`` (a run that
    cannot be resumed must not advise --resume)."""
    return interrupting(lambda name: f"interrupted by {name}; committed files are kept and listed in the "
                                     f"manifest; {advice}")


@contextmanager
def interrupting(describe: Callable[[str], str]) -> Iterator[None]:
    """Turn SIGINT/SIGTERM into :class:`Interrupted` in the main thread, once, its message
    ``describe(signal name)``: what was happening decides what the one line says."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: object) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)  # cleanup must not be interrupted again
        raise Interrupted(describe(signal_name(signum)), signum=signum)

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


@contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM while the manifest and _SUCCESS are written, then act on them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    old = {sig: signal.signal(sig, lambda s, _f: got.append(s)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
    if got:
        raise Interrupted(f"interrupted by {signal_name(got[0])} after the run completed", signum=got[0])
