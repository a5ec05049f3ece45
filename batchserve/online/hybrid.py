"""What serves beside the model, built once at startup from the settings: the challenger (online
shadow), live drift against a reference, the request log, and the after-answer thread that feeds
them; and the nightly scores (precomputed). Each is optional; a bad one fails startup as one line."""

from __future__ import annotations

import concurrent.futures
import dataclasses
from typing import Any

from batchserve import drift, io, manifest, model, reference
from batchserve.config import ServeConfig
from batchserve.errors import InputError
from batchserve.online.batcher import AnswerHook
from batchserve.online.capture import RequestLog, check_log_columns
from batchserve.online.live_drift import LiveDrift
from batchserve.online.precomputed import Precomputed
from batchserve.online.shadow import OnlineShadow
from batchserve.online.slots import Served, Slots, model_name
from batchserve.online.tap import Answered, Tap, log_columns
from batchserve.online.telemetry import Telemetry

__all__ = ["Hybrid", "hybrid_parts", "load_reference"]


def load_reference(cfg: ServeConfig, features: tuple[str, ...]) -> reference.Reference:
    """The reference, read and checked as ``score --reference`` reads it."""
    assert cfg.reference is not None
    if not io.exists(cfg.reference, cfg.storage):
        raise InputError("reference not found; pass a profile from `batchserve profile` or a _manifest.json",
                                   path=cfg.reference)
    data = io.read_bytes(cfg.reference, cfg.storage)
    ref = manifest.load_reference(data.decode("utf-8", errors="replace"), cfg.reference, model.sha256_hex(data))
    reference.check_reference_covers(ref, list(features))
    return ref


@dataclasses.dataclass
class Hybrid:
    challenger: Slots | None = None
    shadow: OnlineShadow | None = None
    live: LiveDrift | None = None
    tap: Tap | None = None
    precomputed: Precomputed | None = None

    def hook(self, served: Served) -> AnswerHook:
        """Hands an answered batch of ``served`` to the after-answer thread."""
        tap = self.tap
        assert tap is not None
        version = served.version

        def on_answer(tags: list[Any], feeds: Any, preds: Any) -> None:
            tap.put(Answered(version, tuple(tags), feeds, preds))

        return on_answer


def hybrid_parts(cfg: ServeConfig, telemetry: Telemetry, executor: concurrent.futures.Executor, name: str,
                 served: Served) -> Hybrid:
    """Load and check everything the settings ask for beside ``served`` (blocking)."""
    parts = Hybrid()
    if cfg.challenger:
        ccfg = dataclasses.replace(cfg, model=cfg.challenger, name=model_name(cfg.challenger), features=None,
                                   features_override=False)
        # Its own telemetry: the served model's info and reload metrics stay the served model's.
        # One intra-op thread: the challenger never takes more than one core at a time, and --shadow-budget
        # bounds the share of that core's time it takes (with every core, a challenger much slower than the
        # champion took the cores the answers needed; make bench-serve's slow-challenger case).
        parts.challenger = Slots(ccfg, Telemetry(), executor, 1, role="challenger")
        parts.challenger.start()
        parts.shadow = OnlineShadow(parts.challenger, served.plan, budget=cfg.shadow_budget, telemetry=telemetry)
        parts.shadow.check()
    if cfg.reference:
        window_rows, window_seconds = cfg.window
        policy = drift.parse_policy(cfg.drift_metric, cfg.drift_threshold)
        parts.live = LiveDrift(served.plan, load_reference(cfg, served.plan.features), policy,
                               window_rows=window_rows, window_seconds=window_seconds,
                               output_order=[o.name for o in served.info.outputs])
    request_log = None
    if cfg.log_requests:
        challenger_schema = parts.challenger.current.prediction_schema if parts.challenger else None
        check_log_columns(log_columns(served.plan, served.prediction_schema.names, challenger_schema))
        request_log = RequestLog(cfg.log_requests, cfg.storage, sample=cfg.log_sample, flush_rows=cfg.log_flush_rows,
                                 flush_seconds=cfg.log_flush_seconds, buffer_rows=cfg.log_buffer_rows,
                                 telemetry=telemetry, model=name)
    if parts.shadow is not None or parts.live is not None or request_log is not None:
        assert parts.challenger is None or parts.challenger.ready
        parts.tap = Tap(served.plan, telemetry, capacity_rows=cfg.max_queue_rows, log_sample=cfg.log_sample,
                        request_log=request_log, live=parts.live, shadow=parts.shadow,
                        challenger_schema=parts.challenger.current.prediction_schema if parts.challenger else None)
    if cfg.precomputed:
        assert cfg.key is not None
        parts.precomputed = Precomputed(cfg.precomputed, cfg.key, cfg.storage, telemetry)
        parts.precomputed.load()
    return parts
