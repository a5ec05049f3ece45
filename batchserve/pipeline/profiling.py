"""``batchserve profile``: statistics of trusted data through the same Dask path as scoring,
written as a versioned reference profile that nightly runs compare against."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

from batchserve import drift, io, scoring
from batchserve.config import ScoreConfig, utc_now
from batchserve.config.secrets import redact_text
from batchserve.errors import SchemaError
from batchserve.pipeline.output import check_profile_output
from batchserve.pipeline.plan import RunPlan, absolute_paths, plan_run, read_inputs
from batchserve.pipeline.record import current_stats, tool_version
from batchserve.pipeline.submit import ProgressEvent, Submission
from batchserve.reference import Profile, column_record, profile_dumps, quantile_histogram
from batchserve.worker import Receipt

__all__ = ["profile_config"]


def profile_config(
    cfg: ScoreConfig, *, on_progress: Callable[[ProgressEvent], None] | None = None
) -> Profile:
    """Profile with a resolved config: with ``cfg.model``, the model's features and its predictions;
    without, ``cfg.features`` or every numeric column."""
    cfg = absolute_paths(cfg)
    check_profile_output(cfg)
    t0 = time.perf_counter()
    plan = plan_run(cfg) if cfg.model else _plan_without_model(cfg)
    if on_progress:
        on_progress(ProgressEvent("planned", 0, len(plan.partitions), 0, plan.rows, 0.0))
    sub = Submission(cfg, plan, "profile-" + secrets.token_hex(3), write=False)
    sub.run(with_model=bool(cfg.model), t0=t0, on_progress=on_progress)
    prof = _profile_of(cfg, plan, sub.receipts)
    io.write_text_atomic(cfg.output, profile_dumps(prof), cfg.storage)
    if on_progress:
        n = len(sub.receipts)
        on_progress(ProgressEvent("done", n, n, plan.rows, plan.rows, time.perf_counter() - t0))
    return prof


def _plan_without_model(cfg: ScoreConfig) -> RunPlan:
    root, pairs, _ = read_inputs(cfg)
    names = tuple(cfg.features) if cfg.features else tuple(
        f.name for f in pairs[0][1].schema if scoring.is_numeric_type(f.type)
    )
    if not names:
        raise SchemaError("no numeric columns to profile; pass --features", path=pairs[0][0].url)
    fplan = scoring.FeaturePlan(names, (scoring.InputBinding("features", "float64", names, 2),), "flag")
    for part, footer in pairs:
        scoring.check_schema(fplan, footer.schema, part.url)
    return RunPlan(
        "", "", None, None, fplan, root,  # type: ignore[arg-type] # no model: no info
        tuple(p for p, _ in pairs), tuple(f for _, f in pairs),
    )


def _profile_of(cfg: ScoreConfig, plan: RunPlan, receipts: list[Receipt]) -> Profile:
    current, preds = current_stats(plan, receipts)
    feats = list(plan.features.features)
    prof = Profile(
        created_at=utc_now(),
        batchserve_version=tool_version(),
        source={"input": cfg.input, "files": len(plan.partitions), "rows": plan.rows},
        model=None if not cfg.model else {"uri": redact_text(cfg.model), "resolved_uri": redact_text(plan.model_url),
                                          "sha256": plan.info.sha256},
        features=feats,
        predictions=preds,
        columns={
            **{n: column_record(current.get(n, drift.ColumnSummary()), "feature") for n in feats},
            **{n: column_record(current[n], "prediction") for n in preds},
        },
    )
    for name, col in prof.columns.items():
        s = current.get(name)
        if s is not None and s.count:
            col["histogram"] = quantile_histogram(s)
    return prof
