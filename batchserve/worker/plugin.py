"""The worker's model: one ONNX Runtime session per worker, built where it lives.

A task refers to the session by plugin name; :class:`WorkerModel` builds it once per (model
digest, device, feature plan) in ``setup()``: loaded, warmed up, and checked for the provider it
really got. Registering the same model twice is a no-op (the digest is in the name). On Dask it is
registered as :class:`~batchserve.worker.dask_plugin.ModelPlugin` (the same, as a WorkerPlugin);
the in-process engine holds it directly, so this module imports no Dask.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import pyarrow as pa

from batchserve import io, model, predictions, scoring, tuning
from batchserve.errors import WorkerStateError
from batchserve.worker.context import host_of

__all__ = ["ModelSpec", "WorkerModel", "loaded_model", "worker_report"]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """The recipe for a session: where the model is and how to run it (no session inside)."""

    url: str
    sha256: str
    device: str
    plan: scoring.FeaturePlan
    prefix: str = ""
    storage_options: tuple[tuple[str, str], ...] = ()
    #: host -> number of our workers on it, to split that host's cores between them.
    workers_per_host: tuple[tuple[str, int], ...] = ()
    #: worker address -> index among workers on its host, for "worker i takes GPU i mod n".
    worker_slots: tuple[tuple[str, int], ...] = ()
    #: ``--batch-size auto``: probe ORT's fastest batch size up to this many rows (the I/O batch);
    #: None runs every batch whole (a fixed ``--batch-size N``).
    probe_up_to: int | None = None
    #: GPU sessions: fp32 or fp16, and a TensorRT engine cache folder (None: CUDA provider only).
    precision: str = "fp32"
    trt_cache: str | None = None

    @property
    def plugin_name(self) -> str:
        # The digest in the name makes re-registering the same model a no-op.
        plan_digest = model.sha256_hex(
            repr((self.plan, self.prefix, self.probe_up_to, self.precision, self.trt_cache)).encode())[:8]
        return f"batchserve-model-{self.sha256[:16]}-{self.device}-{plan_digest}"

    @property
    def storage(self) -> dict[str, Any]:
        return io.storage_of(self.storage_options)


class WorkerModel:
    """Builds and holds this worker's session; Dask runs ``setup`` on every (new) worker."""

    idempotent = True

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.name = spec.plugin_name
        self.model: model.LoadedModel | None = None
        self.prediction_schema: pa.Schema | None = None
        self.setup_seconds = 0.0
        self.probe: dict[int, float] | None = None

    def setup(self, worker: Any) -> None:
        start = time.perf_counter()
        spec = self.spec
        data = io.read_bytes(spec.url, spec.storage)
        digest = model.sha256_hex(data)
        if digest != spec.sha256:
            raise WorkerStateError(
                "model file changed since the run was planned (sha256 differs); re-run to pick up the new model",
                path=spec.url, expected=spec.sha256[:12], found=digest[:12],
            )
        host = host_of(worker.address)
        per_host = dict(spec.workers_per_host).get(host, 1)
        slot = dict(spec.worker_slots).get(worker.address)
        if slot is None:  # a replacement worker that joined after planning
            slot = int(worker.name) if str(worker.name).isdigit() else 0
        task_threads = max(1, int(getattr(worker.state, "nthreads", 1)))
        threads = max(1, tuning.available_cores() // max(1, per_host) // task_threads)
        gpu = model.pick_gpu(spec.device, slot)
        loaded = model.build_session(data, device=spec.device, intra_op_threads=threads, gpu_id=gpu,
                                     precision=spec.precision, trt_cache=spec.trt_cache)
        try:
            outputs = loaded.run(scoring.sample_feeds(spec.plan))
        except BaseException:
            loaded.close()
            raise
        cols = predictions.outputs_to_columns(outputs, 2, spec.prefix)
        if spec.probe_up_to:
            loaded.infer_rows, self.probe = tuning.probe_batch(
                loaded, lambda n: scoring.sample_feeds(spec.plan, n, random=True), spec.probe_up_to)
        self.prediction_schema = pa.schema([pa.field(k, v.type) for k, v in cols.items()])
        self.model = loaded
        self.setup_seconds = time.perf_counter() - start

    def teardown(self, worker: Any) -> None:
        if self.model is not None:
            self.model.close()
        self.model = None


def loaded_model(worker: Any, plugin_name: str) -> WorkerModel:
    """The one accessor for worker state; says how to fix it when it is missing."""
    plugin = worker.plugins.get(plugin_name)
    if plugin is None or getattr(plugin, "model", None) is None:
        raise WorkerStateError(
            f"this worker has no session for plugin {plugin_name!r}; tasks must be submitted through "
            "batchserve.score (which registers ModelPlugin) or after client.register_plugin(ModelPlugin(spec))"
        )
    return plugin  # type: ignore[no-any-return]


def worker_report(plugin_name: str, dask_worker: Any = None) -> dict[str, Any]:
    """Per-worker facts for the manifest (run with ``client.run``)."""
    plugin = loaded_model(dask_worker, plugin_name)
    m = plugin.model
    assert m is not None
    return {
        "address": dask_worker.address,
        "name": str(dask_worker.name),
        "provider": m.provider,
        "device": m.device,
        "gpu_id": m.gpu_id,
        "intra_op_threads": m.intra_op_threads,
        "fallback_reason": m.fallback_reason,
        "setup_seconds": round(plugin.setup_seconds, 4),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "infer_batch": m.infer_rows,
        "node_placement": m.node_placement(),
        "io_binding": m.io_binding,
        "batch_probe": {str(k): round(v) for k, v in plugin.probe.items()} if plugin.probe else None,
    }
