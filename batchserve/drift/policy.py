"""Which metric decides per column and its thresholds (``--drift-metric``, ``--drift-threshold``),
and the per-column comparison that applies them."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from batchserve.drift.metrics import (
    METRICS,
    _categorical_view,
    _exact_metrics,
    _null_rate,
    _undefined_reasons,
)
from batchserve.drift.summary import ColumnSummary
from batchserve.errors import ConfigError

__all__ = ["DEFAULT_THRESHOLDS", "DriftPolicy", "parse_policy", "compare_columns"]


DEFAULT_THRESHOLDS: dict[str, float] = {
    "psi": 0.2,
    "js": 0.1,
    "wasserstein": 0.1,
    "ks": 0.1,
    "null_rate_change": 0.05,
}


@dataclasses.dataclass(frozen=True)
class DriftPolicy:
    """Which metric decides per column, and the thresholds, with per-column overrides."""

    metric: str = "psi"
    thresholds: tuple[tuple[str, float], ...] = tuple(DEFAULT_THRESHOLDS.items())
    column_metrics: tuple[tuple[str, str], ...] = ()
    column_thresholds: tuple[tuple[str, str, float], ...] = ()

    def metric_for(self, column: str) -> str:
        return dict(self.column_metrics).get(column, self.metric)

    def threshold(self, column: str, metric: str) -> float:
        for col, m, v in self.column_thresholds:
            if col == column and m == metric:
                return v
        return dict(self.thresholds)[metric]

    def as_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "defaults": dict(self.thresholds),
            "per_column": {
                **{c: {"metric": m} for c, m in self.column_metrics},
                **{c: {m: v} for c, m, v in self.column_thresholds},
            },
        }


def _check_metric(name: str, allow_null_rate: bool = False) -> str:
    valid = sorted(METRICS) + (["null_rate_change"] if allow_null_rate else [])
    if name not in valid:
        raise ConfigError(f"unknown drift metric {name!r}; valid: {', '.join(valid)}")
    return name


def parse_policy(metrics: Sequence[str] = (), thresholds: Sequence[str] = ()) -> DriftPolicy:
    """Parse ``[COLUMN:]METRIC`` and ``[COLUMN:]METRIC=VALUE`` items (CLI flags or job file)."""
    metric = "psi"
    col_metrics: dict[str, str] = {}
    for item in metrics:
        col, sep, name = item.rpartition(":")
        if sep:
            col_metrics[col] = _check_metric(name)
        else:
            metric = _check_metric(name)
    defaults = dict(DEFAULT_THRESHOLDS)
    col_thresholds: dict[tuple[str, str], float] = {}
    for item in thresholds:
        key, eq, raw = item.partition("=")
        if not eq:
            raise ConfigError(f"--drift-threshold takes [COLUMN:]METRIC=VALUE, got {item!r}")
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"--drift-threshold value must be a number, got {raw!r}") from None
        col, sep, name = key.rpartition(":")
        _check_metric(name, allow_null_rate=True)
        if sep:
            col_thresholds[(col, name)] = value
        else:
            defaults[name] = value
    return DriftPolicy(
        metric,
        tuple(defaults.items()),
        tuple(sorted(col_metrics.items())),
        tuple(sorted((c, m, v) for (c, m), v in col_thresholds.items())),
    )


def compare_columns(ref: ColumnSummary, cur: ColumnSummary, column: str, policy: DriftPolicy) -> dict[str, Any]:
    """All metrics for one column, and whether its deciding metric passes its threshold.

    Every numeric column gets every numeric metric (exact from the counts when the column has
    few distinct values, from the sketches otherwise); columns with few values also get the
    categorical view (PSI and JS over the values). Text columns are compared as categories.
    """
    null_change = _null_rate(cur) - _null_rate(ref)
    numeric = ref.sketch is not None or cur.sketch is not None  # text columns have no sketch on either side
    view = _categorical_view(ref, cur)
    metrics: dict[str, float | None]
    if numeric:
        exact = _exact_metrics(ref, cur)
        metrics = exact if exact is not None else {name: fn(ref, cur) for name, fn in METRICS.items()}
        kind = "numeric"
    else:
        metrics = {"psi": view["psi"] if view else None, "ks": None, "wasserstein": None,
                   "js": view["js"] if view else None}
        kind = "categorical"
    chosen = policy.metric_for(column)
    if metrics.get(chosen) is None and kind == "categorical":
        chosen = "psi"  # ks/wasserstein have no meaning over categories
    decided_by = None
    value = metrics.get(chosen)
    if value is not None and value > policy.threshold(column, chosen):
        decided_by = chosen
    elif abs(null_change) > policy.threshold(column, "null_rate_change"):
        decided_by = "null_rate_change"
    entry: dict[str, Any] = {
        "kind": kind,
        **{k: (None if v is None else round(float(v), 6)) for k, v in metrics.items()},
        "null_rate_change": round(null_change, 6),
        "unseen_categories": view["unseen_categories"] if view else 0,
        "metric": chosen,
        "threshold": policy.threshold(column, chosen),
        "drifted": decided_by is not None,
        "decided_by": decided_by,
        "undefined": _undefined_reasons(ref, cur, metrics, numeric),
    }
    if numeric and view is not None:
        entry["categorical"] = view
    return entry
