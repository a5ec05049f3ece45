"""The served model: resolve the reference, load, check, warm up; follow an alias and swap.

A server started with ``root@alias`` checks where the alias points every ``poll_seconds`` (and on
SIGHUP) by reading the audit trail only, no model bytes. When it moved, the new version is loaded,
checked (it must accept every request the old one accepted: the same feature plan) and warmed up
beside the old one, then swapped in with one assignment. Requests already queued finish on the
version they were queued on; the old session is closed once its queue drains, so at most two are
ever loaded and one after the swap. A version that fails to load or check leaves the old one serving
(one log line, a metric) and is not retried until the alias moves again.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from batchserve import model, predictions, registry, scoring
from batchserve.config import ServeConfig
from batchserve.errors import BatchserveError, ModelError, located
from batchserve.online.batcher import AnswerHook, Batcher
from batchserve.online.inputs import input_metadata
from batchserve.online.protocol import prediction_tensor
from batchserve.online.telemetry import Telemetry

__all__ = ["Served", "Slots", "load_model", "model_name"]

log = logging.getLogger("batchserve.serve")


def model_name(ref: str) -> str:
    """The default name in URLs: the repository folder's name, or the model file's stem."""
    uri = registry.parse_ref(ref).uri.rstrip("/")
    base = uri.rsplit("/", 1)[-1]
    return base[:-5] if base.endswith(".onnx") else base


@dataclasses.dataclass(eq=False)
class Served:
    """One loaded, checked and warmed-up model version, and the queue in front of it."""

    version: str | None
    url: str
    sha256: str
    info: model.ModelInfo
    plan: scoring.FeaturePlan
    loaded: model.LoadedModel
    alias_event: registry.Event | None
    #: Output name -> its V2 metadata (datatype, shape, labels), from the warm-up run.
    outputs: dict[str, dict[str, Any]]
    #: The prediction columns as ``score`` writes them (names and Arrow types), from the warm-up run.
    prediction_schema: pa.Schema
    batcher: Batcher | None = None

    def run(self, feeds: Mapping[str, np.ndarray], rows: int) -> dict[str, predictions.Prediction]:
        """The predictions ``score`` would write for these rows, before they become Arrow."""
        return predictions.predictions(self.loaded.run(feeds), rows)

    def accepts_requests_of(self, other: Served) -> bool:
        """Whether every request ``other`` accepted is still valid here (same features, inputs, types)."""
        return self.plan.features == other.plan.features and self.plan.bindings == other.plan.bindings


def load_model(cfg: ServeConfig, threads: int, worker_index: int = 0) -> Served:
    """Resolve ``cfg.model``, load it, check it as ``score`` does and warm it up (blocking)."""
    resolved = registry.resolve(cfg.model, cfg.storage)
    with located(resolved.url):
        info = model.describe(resolved.data)
        plan = scoring.plan_features(info, cfg.features, [i.name for i in info.inputs], override=cfg.features_override)
    plan = dataclasses.replace(plan, nan=cfg.nan)
    loaded = model.build_session(resolved.data, device=cfg.device, intra_op_threads=threads,
                                 gpu_id=model.pick_gpu(cfg.device, worker_index))
    try:
        with located(resolved.url):
            columns = predictions.predictions(loaded.run(scoring.sample_feeds(plan)), 2)
            arrow = {k: predictions.prediction_to_arrow(p) for k, p in columns.items()}  # what score stores
            # A second, larger run on varied rows: tree models take other branches, the MLP's GEMM
            # other kernels; the first real request pays none of that.
            loaded.run(scoring.sample_feeds(plan, 64, random=True))
    except BaseException:
        loaded.close()
        raise
    outputs = {}
    for name, arr in columns.items():
        t = prediction_tensor(name, arr)
        meta: dict[str, Any] = {"name": name, "datatype": t.datatype, "shape": [-1, *t.shape[1:]]}
        if t.parameters:
            meta["parameters"] = dict(t.parameters)
        outputs[name] = meta
    schema = pa.schema([pa.field(k, a.type) for k, a in arrow.items()])
    return Served(resolved.version, resolved.url, model.sha256_hex(resolved.data), info, plan, loaded,
                  resolved.alias_event, outputs, schema)


class Slots:
    """The model (by name) this server answers with, and the swap when its alias moves."""

    def __init__(self, cfg: ServeConfig, telemetry: Telemetry, executor: concurrent.futures.Executor,
                 threads: int, worker_index: int = 0, role: str = "model") -> None:
        self.cfg = cfg
        #: "model", or "challenger" (the online shadow's): said in every log line about it.
        self.role = role
        self.name = cfg.name or model_name(cfg.model)
        self.alias = registry.parse_ref(cfg.model).alias
        self.telemetry = telemetry
        self._executor = executor
        self._threads = threads
        self._worker_index = worker_index
        self._current: Served | None = None
        self._refused: int | None = None  # the audit event whose version failed: not retried
        self._lock: asyncio.Lock | None = None
        self.hup: asyncio.Event | None = None
        #: Where answered batches go after the answer (shadow, live drift, request log), if anywhere.
        self.on_answer: Callable[[Served], AnswerHook] | None = None
        #: Told of every version swapped in (what depends on the served version checks itself again).
        self.on_swap: Callable[[Served], None] | None = None

    @property
    def current(self) -> Served:
        if self._current is None:
            raise ModelError("the model is not loaded yet")
        return self._current

    @property
    def ready(self) -> bool:
        return self._current is not None

    def _attach(self, served: Served) -> Served:
        served.batcher = Batcher(served.run, self._executor, max_batch_rows=self.cfg.max_batch_size,
                                 max_queue_rows=self.cfg.max_queue_rows, max_delay_us=self.cfg.max_queue_delay_us,
                                 inline_rows=self.cfg.inline_rows, stats=self.telemetry,
                                 on_answer=self.on_answer(served) if self.on_answer is not None else None)
        return served

    def load(self) -> Served:
        """Resolve, load, check and warm up what the reference names now (blocking)."""
        return load_model(self.cfg, self._threads, self._worker_index)

    def start(self, preloaded: Served | None = None) -> None:
        """Load (or take) the first version; the server reports ready only after this."""
        served = self._attach(preloaded or self.load())
        self._current = served
        self.telemetry.loaded.set(1)
        self.telemetry.served(self.name, served.version, self.alias, served.sha256)
        log.info("serving %s %s version %s (%s)%s", self.role, self.name, served.version or "-", served.url,
                 _moved(served), extra={"fields": {
                     "event": "serving", "role": self.role, "model": self.name, "version": served.version,
                     "alias_event": served.alias_event.as_dict() if served.alias_event else None}})

    async def follow(self) -> None:
        """Check the alias every ``poll_seconds`` and on SIGHUP, until cancelled."""
        self.hup = asyncio.Event()
        while True:
            try:
                await asyncio.wait_for(self.hup.wait(), self.cfg.poll_seconds)
            except TimeoutError:
                pass
            self.hup.clear()
            await self.refresh()

    async def refresh(self) -> bool:
        """One check of the alias; a swap if it moved. True when a new version is now served."""
        if self.alias is None:
            return False
        self._lock = self._lock or asyncio.Lock()
        async with self._lock:
            return await self._refresh()

    async def _refresh(self) -> bool:
        loop = asyncio.get_running_loop()
        old = self.current
        try:
            event = await loop.run_in_executor(None, registry.alias_target, self.cfg.model, self.cfg.storage)
        except BatchserveError as exc:
            log.warning("cannot read the alias %s@%s (still serving version %s): %s", self.name, self.alias,
                        old.version, exc)
            return False
        if event is None or str(event.to_version) == old.version or event.seq == self._refused:
            return False
        try:
            new = await loop.run_in_executor(None, self.load)
            if not new.accepts_requests_of(old):
                new.loaded.close()
                raise ModelError(f"its inputs differ ({_inputs(new)}; served: {_inputs(old)}), so requests the "
                                 "served version accepts would fail")
        except BatchserveError as exc:
            self._refused = event.seq
            self.telemetry.reload_failures.inc()
            log.error("refused version %s of %s %s (alias %s moved by %s): %s; still serving version %s",
                      event.to_version, self.role, self.name, self.alias, event.actor, exc, old.version,
                      extra={"fields": {"event": "reload_failed", "role": self.role,
                                        "version": str(event.to_version)}})
            return False
        self.telemetry.loaded.set(2)
        self._current = self._attach(new)
        self.telemetry.reloads.inc()
        self.telemetry.served(self.name, new.version, self.alias, new.sha256)
        log.info("swapped %s %s from version %s to %s%s", self.role, self.name, old.version, new.version, _moved(new),
                 extra={"fields": {"event": "swapped", "role": self.role, "from": old.version, "to": new.version,
                                   "alias_event": new.alias_event.as_dict() if new.alias_event else None}})
        if self.on_swap is not None:
            self.on_swap(new)
        assert old.batcher is not None
        await old.batcher.drained()
        old.loaded.close()
        self.telemetry.loaded.set(1)
        return True

    def metadata(self, served: Served) -> dict[str, Any]:
        """V2 model metadata, plus what the repository says about the version (alias, audit event)."""
        e = served.alias_event
        return {
            "name": self.name, "versions": [served.version] if served.version else [],
            "platform": "onnxruntime_onnx", "inputs": input_metadata(served.plan),
            "outputs": list(served.outputs.values()),
            "parameters": {"features": list(served.plan.features), "alias": self.alias, "sha256": served.sha256,
                           "alias_event": e.as_dict() if e else None, "nan": served.plan.nan},
        }


def _inputs(served: Served) -> str:
    native = ", ".join(f"{b.input_name} {b.dtype}[{len(b.columns)}]" for b in served.plan.bindings)
    return f"inputs {native}, features {', '.join(served.plan.features)}"


def _moved(served: Served) -> str:
    e = served.alias_event
    if e is None:
        return ""
    return f"; alias {e.alias} moved by {e.actor} at {e.time} ({e.action}, event {e.seq}" + \
        (f": {e.message})" if e.message else ")")
