"""The worker's model as a Dask WorkerPlugin: what ``client.register_plugin`` installs on every
worker of a Dask cluster (Dask ships it by reference: this import path is part of the wire format)."""

from __future__ import annotations

from distributed import WorkerPlugin

from batchserve.worker.plugin import WorkerModel

__all__ = ["ModelPlugin"]


class ModelPlugin(WorkerModel, WorkerPlugin):
    """:class:`WorkerModel` on a Dask worker: Dask calls ``setup`` on every worker, new ones included."""
