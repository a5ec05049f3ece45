"""Mergeable column statistics and drift metrics, computed in the same pass as scoring.

Pure: arrays in, summaries and numbers out; never a path. Every column gets a
:class:`ColumnSummary` that workers build per partition and the client merges.
Counts, nulls, moments (Chan's parallel formulas), min, max and category counts
merge exactly; the distribution is a KLL quantile sketch (Apache DataSketches,
the sketch whylogs uses), which merges with a proven rank-error bound (about
0.7% at ``SKETCH_K = 400``) whatever the column's scale: crowded values such as
probabilities near 1, years or latitudes are resolved as well as values near 0.

A profile and a run manifest store the same summaries, so either can be the
reference for the next run.

Metrics (their formulas and estimation error are in the README):

* PSI on the reference's decile bins, ``sum((c - r) * ln(c / r))``, empty bins
  floored at ``PSI_EPSILON``;
* KS: the largest gap between the two CDFs, on a grid of both sketches' quantiles;
* Wasserstein-1 between the two CDFs on that grid, divided by the reference's std;
* Jensen-Shannon distance (base 2, in [0, 1]) on the reference's 20 quantile bins;
* categorical columns: PSI and JS over categories, unseen categories pooled;
* null-rate change: current null share minus reference null share.

Example::

    >>> a = summarize_numeric(np.array([1.0, 2.0, 3.0]))
    >>> b = summarize_numeric(np.array([4.0]))
    >>> merge(a, b).count
    4
"""

from __future__ import annotations

import base64
import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from datasketches import kll_floats_sketch

from batchserve.errors import ConfigError

__all__ = [
    "SKETCH_K",
    "SKETCH_FULL_ROWS",
    "SKETCH_STRIDE",
    "CATEGORY_CAP",
    "PSI_EPSILON",
    "DEFAULT_THRESHOLDS",
    "METRICS",
    "ColumnSummary",
    "summarize_numeric",
    "summarize_matrix",
    "summarize_categorical",
    "merge",
    "merge_maps",
    "quantile",
    "quantiles",
    "bin_shares",
    "describe_column",
    "psi",
    "ks",
    "wasserstein",
    "js",
    "compare_columns",
    "DriftPolicy",
    "parse_policy",
]

SKETCH_K = 1000
#: Batches above this many rows feed the KLL sketch 1 row in SKETCH_STRIDE (moments,
#: counts, extremes and categories always use every row).
SKETCH_FULL_ROWS = 8192
SKETCH_STRIDE = 16
CATEGORY_CAP = 50
PSI_EPSILON = 1e-4
_GRID = 2001  # quantile points per side for KS and Wasserstein

DEFAULT_THRESHOLDS: dict[str, float] = {
    "psi": 0.2,
    "js": 0.1,
    "wasserstein": 0.1,
    "ks": 0.1,
    "null_rate_change": 0.05,
}


@dataclasses.dataclass(eq=False)
class ColumnSummary:
    """Everything we keep about one column of one partition (or many, once merged)."""

    #: Finite, non-null values.
    count: int = 0
    nulls: int = 0
    #: NaN (beyond nulls) and +-inf, kept out of the moments and the sketch.
    nonfinite: int = 0
    mean: float = 0.0
    m2: float = 0.0
    min: float | None = None
    max: float | None = None
    #: Exact value counts while there are at most CATEGORY_CAP distinct values; None after.
    categories: dict[str, int] | None = dataclasses.field(default_factory=dict)
    #: KLL sketch of the finite values (None when there are none).
    sketch: kll_floats_sketch | None = None

    @property
    def total(self) -> int:
        return self.count + self.nulls + self.nonfinite

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.count) if self.count > 1 else 0.0

    def sketch_bytes(self) -> bytes:
        return bytes(self.sketch.serialize()) if self.sketch is not None else b""

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ColumnSummary):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __getstate__(self) -> dict[str, Any]:
        # Dask pickles receipts: ship the sketch as its compact serialized form.
        return self.to_dict()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(ColumnSummary.from_dict(state).__dict__)

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count, "nulls": self.nulls, "nonfinite": self.nonfinite, "mean": self.mean,
            "m2": self.m2, "min": self.min, "max": self.max, "categories": self.categories,
            "sketch": base64.b64encode(self.sketch_bytes()).decode("ascii"),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ColumnSummary:
        raw = base64.b64decode(d.get("sketch") or "")
        return cls(
            count=int(d["count"]), nulls=int(d.get("nulls", 0)), nonfinite=int(d.get("nonfinite", 0)),
            mean=float(d.get("mean", 0.0)), m2=float(d.get("m2", 0.0)), min=d.get("min"), max=d.get("max"),
            categories=d.get("categories"), sketch=kll_floats_sketch.deserialize(raw) if raw else None,
        )


def _category_counts(col: np.ndarray) -> dict[str, int] | None:
    """Exact counts of a finite integer-valued column, or None past CATEGORY_CAP values.

    Decided by the number of distinct values alone, so that merging the counts of
    parts always equals counting the whole.
    """
    if col.size == 0:
        return {}
    if not np.array_equal(col, np.round(col)):
        return None  # fractional values: not categories
    if len(np.unique(col[:1024])) > CATEGORY_CAP:
        return None  # cheap early exit: the whole column has more distinct values too
    lo, hi = float(col.min()), float(col.max())
    if hi - lo <= 4096:
        counts = np.bincount((col - lo).astype(np.int64))
        nz = np.flatnonzero(counts)
        pairs = [(lo + i, int(counts[i])) for i in nz]
    else:
        uniq, cnt = np.unique(col, return_counts=True)
        pairs = list(zip(uniq.tolist(), cnt.tolist(), strict=True))
    if len(pairs) > CATEGORY_CAP:
        return None
    return {_category_key(float(v)): int(c) for v, c in pairs}


def _category_key(value: Any) -> str:
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def summarize_numeric(values: np.ndarray, nulls: int = 0, *, categorical: bool = False) -> ColumnSummary:
    """Summary of one column; ``values`` holds its nulls as NaN and ``nulls`` says how many.

    NaNs beyond the nulls, and +-inf, are counted as ``nonfinite``.
    """
    return summarize_matrix(np.asarray(values).reshape(-1, 1), [nulls], categorical=[categorical])[0]


def summarize_matrix(
    x: np.ndarray,
    nulls: Sequence[int],
    *,
    categorical: Sequence[bool] | None = None,
    rng: np.random.Generator | None = None,
) -> list[ColumnSummary]:
    """Summaries of every column of a feature matrix (nulls already NaN).

    ``x`` is the ``[N, F]`` array the model is fed, so statistics cost one more
    pass over memory that is already hot. Counts, moments, extremes and
    categories cover every row; in batches above ``SKETCH_FULL_ROWS`` rows the
    KLL sketch is fed one row in ``SKETCH_STRIDE`` (a systematic sample with a
    random offset), which is what keeps drift within its throughput budget.
    """
    n, f = x.shape
    categorical = categorical or [False] * f
    if n == 0:
        return [ColumnSummary(nulls=int(nulls[j])) for j in range(f)]
    xf = x if x.dtype.kind == "f" else x.astype(np.float64)
    finite = np.isfinite(xf)
    all_finite = bool(finite.all())
    counts = np.full(f, n) if all_finite else finite.sum(axis=0)
    # Shifted sums (by a value near each column's centre) keep the variance exact
    # in float64 even for columns like years or timestamps.
    head = xf[: min(n, 64)]
    shift = np.nan_to_num(np.nanmean(np.where(np.isfinite(head), head, np.nan), axis=0)) if not all_finite \
        else head.mean(axis=0)
    d = xf - shift.astype(xf.dtype)
    if not all_finite:
        d = np.where(finite, d, 0)
    sums = d.sum(axis=0, dtype=np.float64)
    sumsq = np.einsum("ij,ij->j", d, d, dtype=np.float64)
    safe_counts = np.maximum(counts, 1)
    means = shift + sums / safe_counts
    m2 = np.maximum(sumsq - sums * sums / safe_counts, 0.0)
    if all_finite:
        mins, maxs = xf.min(axis=0), xf.max(axis=0)
    else:
        mins = np.where(finite, xf, np.inf).min(axis=0)
        maxs = np.where(finite, xf, -np.inf).max(axis=0)
    stride = SKETCH_STRIDE if n > SKETCH_FULL_ROWS else 1
    offset = int((rng or np.random.default_rng()).integers(stride)) if stride > 1 else 0
    sample = np.ascontiguousarray(xf[offset::stride].T, dtype=np.float32)
    sample_finite = None if all_finite else np.ascontiguousarray(finite[offset::stride].T)
    out: list[ColumnSummary] = []
    for j in range(f):
        cnt = int(counts[j])
        s = ColumnSummary(nulls=int(nulls[j]), nonfinite=max(0, n - cnt - int(nulls[j])))
        if cnt:
            s.count = cnt
            s.mean, s.m2 = float(means[j]), float(m2[j])
            s.min, s.max = float(mins[j]), float(maxs[j])
            col = sample[j] if sample_finite is None else sample[j][sample_finite[j]]
            if col.size:
                s.sketch = kll_floats_sketch(SKETCH_K)
                s.sketch.update(col)
        if categorical[j]:
            full = xf[:, j] if all_finite else xf[finite[:, j], j]
            s.categories = _category_counts(full)
        else:
            s.categories = None
        out.append(s)
    return out


def summarize_categorical(values: Sequence[Any] | np.ndarray, nulls: int = 0) -> ColumnSummary:
    """Summary of a string (or other non-numeric) column: counts per category only."""
    arr = np.asarray([v for v in values if v is not None], dtype=object)
    cats: dict[str, int] | None = {}
    if len(arr):
        uniq, counts = np.unique(arr.astype(str), return_counts=True)
        cats = None if len(uniq) > CATEGORY_CAP else {str(u): int(c) for u, c in zip(uniq, counts, strict=True)}
    return ColumnSummary(count=len(arr), nulls=nulls, categories=cats)


def merge(a: ColumnSummary, b: ColumnSummary) -> ColumnSummary:
    """Combine two summaries: exact for counts and moments, KLL's merge for the sketch."""
    n = a.count + b.count
    if n == 0:
        mean, m2 = 0.0, 0.0
    else:
        delta = b.mean - a.mean
        mean = a.mean + delta * b.count / n
        m2 = a.m2 + b.m2 + delta * delta * a.count * b.count / n
    sketch = None
    if a.sketch is not None or b.sketch is not None:
        sketch = kll_floats_sketch(SKETCH_K)
        for part in (a.sketch, b.sketch):
            if part is not None:
                sketch.merge(part)
    cats: dict[str, int] | None
    if a.categories is None or b.categories is None:
        cats = None
    else:
        cats = dict(a.categories)
        for k2, v2 in b.categories.items():
            cats[k2] = cats.get(k2, 0) + v2
        if len(cats) > CATEGORY_CAP:
            cats = None
    mins = [v for v in (a.min, b.min) if v is not None]
    maxs = [v for v in (a.max, b.max) if v is not None]
    return ColumnSummary(
        count=n, nulls=a.nulls + b.nulls, nonfinite=a.nonfinite + b.nonfinite, mean=mean, m2=m2,
        min=min(mins) if mins else None, max=max(maxs) if maxs else None, categories=cats, sketch=sketch,
    )


def merge_maps(maps: Iterable[Mapping[str, ColumnSummary]]) -> dict[str, ColumnSummary]:
    out: dict[str, ColumnSummary] = {}
    for m in maps:
        for name, s in m.items():
            out[name] = merge(out[name], s) if name in out else s
    return out


# --- the sketch as a distribution -------------------------------------------------------------


def quantile(s: ColumnSummary, q: float) -> float | None:
    return quantiles(s, [q])[0]


def quantiles(s: ColumnSummary, qs: Sequence[float]) -> list[float | None]:
    """Quantiles within KLL's rank error; the exact min and max at 0 and 1."""
    if s.count == 0 or s.sketch is None:
        return [None for _ in qs]
    inner = [q for q in qs if 0 < q < 1]
    # One sketch call for all ranks: KS and Wasserstein ask for thousands per column.
    found = iter(s.sketch.get_quantiles(inner) if inner else [])
    return [s.min if q <= 0 else s.max if q >= 1 else float(next(found)) for q in qs]


def _split_points(values: Iterable[float]) -> list[float]:
    """Ascending, unique as the sketch's float32 sees them (KLL refuses ties)."""
    return [float(v) for v in np.unique(np.asarray(list(values), dtype=np.float32))]


def _cdf(s: ColumnSummary, points: np.ndarray) -> np.ndarray:
    assert s.sketch is not None
    if len(points) == 0:
        return np.zeros(0)
    return np.asarray(s.sketch.get_cdf(list(points)))[:-1]


def bin_shares(s: ColumnSummary, edges: Sequence[float]) -> np.ndarray:
    """Shares of a column in bins cut at ``edges`` (interior edges, ascending)."""
    edges = _split_points(edges)
    if s.sketch is None or s.count == 0:
        return np.zeros(len(edges) + 1)
    if not edges:
        return np.ones(1)
    return np.asarray(s.sketch.get_pmf(edges, True), dtype=np.float64)


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


# --- metric registry and policy ----------------------------------------------------------------

MetricFn = Callable[[ColumnSummary, ColumnSummary], float | None]
#: Registry by name: what --drift-metric accepts.
METRICS: dict[str, MetricFn] = {"psi": psi, "js": js, "wasserstein": wasserstein, "ks": ks}


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


def describe_column(s: ColumnSummary) -> dict[str, Any]:
    """The per-column statistics every run records (and a later run can compare against)."""
    qs = [0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99]
    return {
        "count": s.count,
        "nulls": s.nulls,
        "nonfinite": s.nonfinite,
        "mean": s.mean if s.count else None,
        "std": s.std if s.count else None,
        "min": s.min,
        "max": s.max,
        "quantiles": {f"p{round(q * 100)}": v for q, v in zip(qs, quantiles(s, qs), strict=True)},
        "categories": s.categories,
    }


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
