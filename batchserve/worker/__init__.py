"""The Dask worker side: the model plugin holding each worker's session, the per-file task, its
overlapping read / infer / write stages, and the commit gate. Tasks return receipts, never data.

Modules: ``plugin`` (sessions built where they live; ``dask_plugin`` registers them on Dask),
``context`` (which worker a task runs on), ``task`` (one file or piece: read, infer,
write, commit), ``stages`` (the reader and writer threads), ``commit`` (the gate a stopped run
closes). Dask ships these by reference, so their import paths are part of the wire format.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from batchserve.worker.commit import CommitGate, commit_fence, stop_commits
from batchserve.worker.plugin import ModelSpec, WorkerModel, loaded_model, worker_report
from batchserve.worker.shadow import ChallengerTask
from batchserve.worker.stages import QUEUE_DEPTH
from batchserve.worker.task import FileTask, Receipt, merge_pieces, score_bundle, score_file

__all__ = [
    "ModelSpec",
    "ModelPlugin",
    "WorkerModel",
    "FileTask",
    "Receipt",
    "loaded_model",
    "score_file",
    "score_bundle",
    "merge_pieces",
    "worker_report",
    "QUEUE_DEPTH",
    "CommitGate",
    "commit_fence",
    "stop_commits",
    "ChallengerTask",
]

if TYPE_CHECKING:
    from batchserve.worker.dask_plugin import ModelPlugin


def __getattr__(name: str) -> Any:
    """``ModelPlugin`` on demand: it is a Dask WorkerPlugin, and importing Dask costs ~0.3 s that a
    run on the in-process engine never needs."""
    if name == "ModelPlugin":
        from batchserve.worker.dask_plugin import ModelPlugin

        return ModelPlugin
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
