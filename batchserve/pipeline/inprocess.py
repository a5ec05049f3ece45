"""The in-process engine (``local-threads``): a small local job's tasks on a thread of this process,
with no Dask at all.

A local Dask cluster costs a small job more than its scoring: importing distributed ~0.3 s, a
scheduler and an in-process worker ~0.05 s, and an event loop that took ~3 s of CPU beside 2,000
small files (make bench, startup and small files). What a run needs of a cluster is little: submit
tasks, learn when each finishes, install the model on the worker, run a function on it (the commit
fence, the worker report), cancel. :class:`InProcessClient` is that subset of Dask's ``Client``,
for one worker in this process; the tasks, the model and the commit fence are the same code that
runs on Dask workers. Anything bigger, or ``--workers``/``--scheduler``, runs on Dask.
"""

from __future__ import annotations

import concurrent.futures
import inspect
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from types import SimpleNamespace
from typing import Any

from batchserve.worker.context import host_of, running_on

__all__ = ["InProcessClient", "InProcessWorker", "TaskFuture"]

log = logging.getLogger("batchserve")

#: How long close() waits for a running task: a bundle stops between files once the run is stopped,
#: and a single file of at most 2M rows (the engine's limit) takes seconds.
CLOSE_WAIT_S = 60.0


class TaskFuture(concurrent.futures.Future[Any]):
    """A task's future, with the ``key`` and ``status`` of a Dask future."""

    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = key

    @property
    def status(self) -> str:
        if not self.done():
            return "pending"
        if self.cancelled():
            return "cancelled"
        return "error" if self.exception() is not None else "finished"


class InProcessWorker:
    """The one worker of an in-process run: what tasks and the model plugin read of a Dask worker."""

    def __init__(self, threads: int) -> None:
        self.address = f"inproc://127.0.0.1/{os.getpid()}"
        self.name = "0"
        self.plugins: dict[str, Any] = {}
        self.state = SimpleNamespace(nthreads=threads)
        #: topic -> handlers, as the client subscribed them (Dask's ``subscribe_topic``).
        self.subscribers: dict[str, list[Callable[[tuple[float, Any]], None]]] = {}

    def log_event(self, topic: str, msg: Any) -> None:
        """Dask's ``Worker.log_event``: hand ``(time, msg)`` to the client's handlers of ``topic``."""
        for handler in list(self.subscribers.get(topic, ())):
            handler((time.time(), msg))


class InProcessClient:
    """The part of Dask's ``Client`` a run uses, for tasks on ``threads`` threads of this process."""

    def __init__(self, threads: int = 1) -> None:
        self.worker = InProcessWorker(threads)
        self._queue: queue.SimpleQueue[tuple[TaskFuture, Callable[..., Any], tuple[Any, ...]] | None] = (
            queue.SimpleQueue())
        # Daemon threads: an interrupted run's process can exit while a task finishes (it cannot commit:
        # the fence is closed). close() waits for it, up to CLOSE_WAIT_S, so that normally nothing writes
        # after the run has cleaned up.
        self._threads = [threading.Thread(target=self._work, name=f"batchserve-task-{i}", daemon=True)
                         for i in range(threads)]
        for t in self._threads:
            t.start()

    def _work(self) -> None:
        with running_on(self.worker):
            while (item := self._queue.get()) is not None:
                future, fn, args = item
                if not future.set_running_or_notify_cancel():
                    continue
                try:
                    # As Dask does: a future among the arguments is its result (a large file's merge task
                    # gets its pieces' receipts). They were queued first, so they are done or running.
                    result = fn(*(a.result() if isinstance(a, TaskFuture) else a for a in args))
                except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on the future
                    future.set_exception(exc)
                else:
                    future.set_result(result)

    def submit(self, fn: Callable[..., Any], *args: Any, key: str, pure: bool = False) -> TaskFuture:
        future = TaskFuture(key)
        self._queue.put((future, fn, args))
        return future

    def subscribe_topic(self, topic: str, handler: Callable[[tuple[float, Any]], None]) -> None:
        """Dask's ``Client.subscribe_topic``: ``handler((time, msg))`` for each event a task logs."""
        self.worker.subscribers.setdefault(topic, []).append(handler)

    def unsubscribe_topic(self, topic: str) -> None:
        self.worker.subscribers.pop(topic, None)

    def register_plugin(self, plugin: Any, name: str) -> None:
        """Set the plugin up on the worker, once per name (Dask's idempotent plugins)."""
        if name not in self.worker.plugins:
            plugin.setup(self.worker)
            self.worker.plugins[name] = plugin

    def run(self, fn: Callable[..., Any], *args: Any, on_error: str = "raise") -> dict[str, Any]:
        """``fn`` on the worker, as Dask's ``client.run``: {worker address: result}."""
        kwargs = {"dask_worker": self.worker} if "dask_worker" in inspect.signature(fn).parameters else {}
        try:
            return {self.worker.address: fn(*args, **kwargs)}
        except Exception as exc:
            if on_error == "return":
                return {self.worker.address: exc}
            raise

    def scheduler_info(self, n_workers: int = -1) -> dict[str, Any]:
        return {"workers": {self.worker.address: {"host": host_of(self.worker.address),
                                                  "nthreads": self.worker.state.nthreads}}}

    def cancel(self, futures: Iterable[TaskFuture]) -> None:
        for f in futures:
            f.cancel()

    def close(self) -> None:
        """Stop the threads once their current task is done; tasks still queued are cancelled."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[0].cancel()
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join(CLOSE_WAIT_S)
            if t.is_alive():  # a task stuck in storage: its commit is fenced off; the daemon thread ends with us
                log.warning("a task was still running %.0f s after the run stopped; leaving it behind", CLOSE_WAIT_S)
        for plugin in self.worker.plugins.values():
            plugin.teardown(self.worker)
        self.worker.plugins.clear()


def as_completed(futures: list[TaskFuture]) -> Iterator[TaskFuture]:
    """The futures as they finish (the in-process counterpart of ``distributed.as_completed``)."""
    for f in concurrent.futures.as_completed(futures):
        assert isinstance(f, TaskFuture)
        yield f
