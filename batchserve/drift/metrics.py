"""Drift metrics between two summaries: PSI, KS, Wasserstein and JS from the sketches, or exactly
from the value counts for low-cardinality columns, and why a metric is undefined when it is."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from batchserve.drift.summary import ColumnSummary, _cdf, _split_points, bin_shares, quantiles

__all__ = ["PSI_EPSILON", "psi", "js", "ks", "wasserstein", "METRICS"]


PSI_EPSILON = 1e-4


_GRID = 2001  # quantile points per side for KS and Wasserstein


def _psi_from_shares(ref: np.ndarray, cur: np.ndarray) -> float:
    r = np.maximum(ref, PSI_EPSILON)
    c = np.maximum(cur, PSI_EPSILON)
    return float(np.sum((c - r) * np.log(c / r)))


def _js_from_shares(ref: np.ndarray, cur: np.ndarray) -> float:
    p = ref / max(ref.sum(), 1e-300)
    q = cur / max(cur.sum(), 1e-300)
    m = (p + q) / 2

    def kl(a: np.ndarray, b: np.ndarray) -> float:
        mask = a > 0
        return float(np.sum(a[mask] * np.log2(a[mask] / b[mask])))

    return math.sqrt(max(0.0, (kl(p, m) + kl(q, m)) / 2))


def _edges(ref: ColumnSummary, bins: int) -> list[float]:
    qs = quantiles(ref, [i / bins for i in range(1, bins)])
    return _split_points(q for q in qs if q is not None)


def _usable(ref: ColumnSummary, cur: ColumnSummary) -> bool:
    return ref.count > 0 and cur.count > 0 and ref.sketch is not None and cur.sketch is not None


def psi(ref: ColumnSummary, cur: ColumnSummary, bins: int = 10) -> float | None:
    """Population stability index on the reference's quantile bins (deciles by default)."""
    if not _usable(ref, cur):
        return None
    edges = _edges(ref, bins)
    return _psi_from_shares(bin_shares(ref, edges), bin_shares(cur, edges))


def js(ref: ColumnSummary, cur: ColumnSummary, bins: int = 20) -> float | None:
    if not _usable(ref, cur):
        return None
    edges = _edges(ref, bins)
    return _js_from_shares(bin_shares(ref, edges), bin_shares(cur, edges))


def _grid(ref: ColumnSummary, cur: ColumnSummary) -> np.ndarray:
    ranks = np.linspace(0, 1, _GRID)
    pts = [v for s in (ref, cur) for v in quantiles(s, list(ranks)) if v is not None]
    return np.asarray(_split_points(pts), dtype=np.float64)


def ks(ref: ColumnSummary, cur: ColumnSummary) -> float | None:
    if not _usable(ref, cur):
        return None
    xs = _grid(ref, cur)
    return float(np.max(np.abs(_cdf(ref, xs) - _cdf(cur, xs))))


def wasserstein(ref: ColumnSummary, cur: ColumnSummary) -> float | None:
    """Wasserstein-1 distance, divided by the reference std.

    Uses the quantile form, the mean over ranks u of |Q_ref(u) - Q_cur(u)|: sketch
    error in a heavy tail is weighted by its small rank mass, not by its width in x.
    """
    if not _usable(ref, cur):
        return None
    u = list((np.arange(_GRID) + 0.5) / _GRID)
    qr = np.asarray(quantiles(ref, u), dtype=np.float64)
    qc = np.asarray(quantiles(cur, u), dtype=np.float64)
    w = float(np.mean(np.abs(qr - qc)))
    return _scaled(w, ref.std)


def _scaled(w: float, scale: float) -> float | None:
    """W divided by the reference std; undefined (None, never infinity) for a constant reference."""
    if scale > 0:
        return w / scale
    return 0.0 if w == 0 else None


def _categorical_shares(ref: ColumnSummary, cur: ColumnSummary) -> tuple[np.ndarray, np.ndarray, int]:
    assert ref.categories is not None and cur.categories is not None
    keys = sorted(ref.categories)
    unseen = sum(v for k, v in cur.categories.items() if k not in ref.categories)
    r = np.array([ref.categories[k] for k in keys] + [0], dtype=np.float64)
    c = np.array([cur.categories.get(k, 0) for k in keys] + [unseen], dtype=np.float64)
    return r / max(1.0, r.sum()), c / max(1.0, c.sum()), unseen


def _null_rate(s: ColumnSummary) -> float:
    return s.nulls / s.total if s.total else 0.0


MetricFn = Callable[[ColumnSummary, ColumnSummary], float | None]


#: Registry by name: what --drift-metric accepts.
METRICS: dict[str, MetricFn] = {"psi": psi, "js": js, "wasserstein": wasserstein, "ks": ks}


def _exact_distribution(s: ColumnSummary) -> tuple[np.ndarray, np.ndarray] | None:
    """(sorted values, probabilities) of a numeric column whose every value was counted, else None."""
    if s.sketch is None or not s.count or not s.categories:
        return None
    try:
        values = np.array([float(k) for k in s.categories], dtype=np.float64)
    except ValueError:
        return None
    counts = np.array(list(s.categories.values()), dtype=np.float64)
    order = np.argsort(values)
    return values[order], counts[order] / counts.sum()


def _exact_cdf(dist: tuple[np.ndarray, np.ndarray], x: np.ndarray) -> np.ndarray:
    values, probs = dist
    cum = np.concatenate([[0.0], np.cumsum(probs)])
    return np.asarray(cum[np.searchsorted(values, x, side="right")])


def _exact_shares(dist: tuple[np.ndarray, np.ndarray], edges: Sequence[float]) -> np.ndarray:
    """Shares in the bins (-inf, e1], (e1, e2], ..., (ek, inf), as the sketch's pmf cuts them."""
    values, probs = dist
    idx = np.searchsorted(np.asarray(edges, dtype=np.float64), values, side="left")
    return np.bincount(idx, weights=probs, minlength=len(edges) + 1).astype(np.float64)


def _exact_edges(dist: tuple[np.ndarray, np.ndarray], bins: int) -> list[float]:
    values, probs = dist
    cum = np.cumsum(probs)
    qs = [values[min(int(np.searchsorted(cum, i / bins - 1e-12, side="left")), len(values) - 1)]
          for i in range(1, bins)]
    return _split_points(qs)


def _exact_metrics(ref: ColumnSummary, cur: ColumnSummary) -> dict[str, float | None] | None:
    """Every numeric metric, exactly, from the counts of a low-cardinality column (hour, weekday, codes)."""
    r, c = _exact_distribution(ref), _exact_distribution(cur)
    if r is None or c is None:
        return None
    grid = np.union1d(r[0], c[0])
    fr, fc = _exact_cdf(r, grid), _exact_cdf(c, grid)
    gap = np.abs(fr - fc)
    edges_psi, edges_js = _exact_edges(r, 10), _exact_edges(r, 20)
    return {
        "psi": _psi_from_shares(_exact_shares(r, edges_psi), _exact_shares(c, edges_psi)),
        "ks": float(gap.max()),
        "wasserstein": _scaled(float(np.sum(gap[:-1] * np.diff(grid))), ref.std),
        "js": _js_from_shares(_exact_shares(r, edges_js), _exact_shares(c, edges_js)),
    }


def _categorical_view(ref: ColumnSummary, cur: ColumnSummary) -> dict[str, Any] | None:
    """PSI and JS over the values themselves, for columns with few distinct values."""
    if ref.categories is None or cur.categories is None or not ref.count or not cur.count:
        return None
    r, c, unseen = _categorical_shares(ref, cur)
    return {"psi": round(_psi_from_shares(r, c), 6), "js": round(_js_from_shares(r, c), 6),
            "unseen_categories": unseen}


def _undefined_reasons(ref: ColumnSummary, cur: ColumnSummary, metrics: Mapping[str, float | None],
                       numeric: bool) -> dict[str, str]:
    """Why each metric that has no value has none (a manifest says null with a reason, never infinity)."""
    reasons: dict[str, str] = {}
    for name, value in metrics.items():
        if value is not None:
            continue
        if not ref.count:
            reasons[name] = "the reference has no finite values in this column"
        elif not cur.count:
            reasons[name] = "this run has no finite values in this column"
        elif not numeric and name in ("ks", "wasserstein"):
            reasons[name] = "categorical column: its values have no order or distance"
        elif name == "wasserstein":
            reasons[name] = "the reference is constant (std 0): there is no spread to scale the distance by"
        else:
            reasons[name] = "not computable from these summaries"
    return reasons
