"""Reference profiles and the drift section: the typed, versioned artifacts drift is built from.

A profile (``batchserve profile``) and a run manifest's drift section hold the same per-column
records; :class:`DriftSection` is the one typed view that the manifest writer, the verdict
(``--fail-on-drift``), the CLI and the report all read, so no consumer indexes dicts by string.
Both artifacts are strict JSON (never ``NaN`` or ``Infinity``) and validated against their
committed JSON Schemas where they are read.

Example::

    >>> s = drift_section({}, [], [], None, drift_mod.DriftPolicy())
    >>> s.reference is None and s.drift_share is None
    True
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping
from importlib import resources
from typing import Any

from batchserve import drift as drift_mod
from batchserve.errors import ConfigError, SchemaError

__all__ = [
    "PROFILE_SCHEMA_NAME",
    "PROFILE_SCHEMA_VERSION",
    "Profile",
    "Reference",
    "ReferenceInfo",
    "ColumnDrift",
    "DriftSection",
    "profile_dumps",
    "profile_json_schema",
    "reference_from_profile",
    "summaries_of",
    "check_reference_covers",
    "column_record",
    "drift_section",
    "category_order",
    "quantile_histogram",
    "strict",
    "strict_dumps",
    "schema_text",
    "check_against_schema",
]

PROFILE_SCHEMA_NAME = "batchserve.reference-profile"
PROFILE_SCHEMA_VERSION = 1
#: Columns with at most this many categories are drawn as bars per value, not as binned ranges.
DISPLAY_CATEGORIES = 20


# --- strict, validated JSON (shared by every artifact) ----------------------------------------


def strict(value: Any) -> Any:
    """The same data with every NaN or infinity as null: artifacts are strict JSON (Node's JSON.parse
    and jq refuse or mangle ``Infinity``); where a metric is undefined, ``undefined`` says why."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict(v) for v in value]
    return value


#: Containers this deep and deeper, and every record in a list, are written on one line.
_EXPANDED_LEVELS = 3


def strict_dumps(data: Any, indent: int) -> str:
    """Strict JSON laid out for people and diffs: the top levels indented, one line per record (a file
    of a run, a feature's statistics). json's own ``indent`` runs its pure-Python encoder, which took
    ~0.9 s per manifest of 2,000 files (make bench, small files) and a manifest is rewritten as a run
    goes; one line per record lets the C encoder write each. NaN and infinity become null."""
    try:
        return _layout(data, indent, 0) + "\n"
    except ValueError:  # a NaN or infinity somewhere: the rare case pays for the walk
        return _layout(strict(data), indent, 0) + "\n"


def _compact(value: Any) -> str:
    return json.dumps(value, allow_nan=False, separators=(", ", ": "))


def _layout(value: Any, indent: int, level: int) -> str:
    inner, outer = " " * (indent * (level + 1)), " " * (indent * level)
    if level < _EXPANDED_LEVELS and isinstance(value, dict) and value:
        items = (f"{inner}{json.dumps(str(k))}: {_layout(v, indent, level + 1)}" for k, v in value.items())
        return "{\n" + ",\n".join(items) + "\n" + outer + "}"
    if level < _EXPANDED_LEVELS and isinstance(value, list | tuple) and any(isinstance(v, dict | list) for v in value):
        return "[\n" + ",\n".join(inner + _compact(v) for v in value) + "\n" + outer + "]"
    return _compact(value)


def schema_text(name: str) -> dict[str, Any]:
    return dict(json.loads(resources.files("batchserve").joinpath(f"schemas/{name}").read_text("utf-8")))


def check_against_schema(data: Any, schema: dict[str, Any], what: str, source: str | None) -> None:
    """Validate an artifact where it enters: a wrong type is one line naming the field, never a crash later."""
    import jsonschema  # only readers of artifacts pay for the import

    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(data))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise ConfigError(f"{what} is malformed at {where}: {error.message[:200]}", path=source)


_SCALARS = (str, int, float, bool, type(None))
_FIELD_NAMES: dict[type, tuple[str, ...] | None] = {}


def _field_names(cls: type) -> tuple[str, ...] | None:
    """A dataclass's field names (None for any other class), looked up once per class."""
    if cls not in _FIELD_NAMES:
        _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls)) if dataclasses.is_dataclass(cls) else None
    return _FIELD_NAMES[cls]


def plain(value: Any) -> Any:
    """``dataclasses.asdict`` without its deep copy of every leaf: artifacts hold only immutable
    scalars, and the copying was a third of writing a 2,000-file manifest. Scalars are answered
    first and each class's field names looked up once: a 2,000-file manifest in 8 ms, not 26 ms,
    and a run rewrites its manifest as it goes."""
    if isinstance(value, _SCALARS):
        return value
    names = _field_names(type(value))
    if names is not None:
        return {name: plain(getattr(value, name)) for name in names}
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def schema_first(artifact: Any) -> dict[str, Any]:
    """An artifact as a dict with its schema identity first: whoever opens the file sees what it is."""
    data = plain(artifact)
    return {"schema": data.pop("schema"), "schema_version": data.pop("schema_version"), **data}


# --- histograms: one builder for profiles and the report ----------------------------------------


def category_order(keys: Iterable[str]) -> list[str]:
    """Category labels in reading order: numerically when they are all numbers (0, 1, 2, ..., 10, 11,
    not 0, 1, 10, 11, 2), else as text."""
    keys = list(keys)
    try:
        return sorted(keys, key=float)
    except ValueError:
        return sorted(keys)


def _shares(s: drift_mod.ColumnSummary | None, edges: list[float]) -> list[float] | None:
    """The one histogram builder: a column's shares in the bins cut at ``edges`` (interior edges)."""
    if s is None or not s.count:
        return None
    return [round(float(v), 6) for v in drift_mod.bin_shares(s, edges)]


def quantile_histogram(s: drift_mod.ColumnSummary, bins: int = 20) -> dict[str, Any]:
    """A profile's histogram: counts in ``bins`` bins cut at the column's own quantiles."""
    edges = drift_mod.quantiles(s, [i / bins for i in range(bins + 1)])
    shares = _shares(s, [e for e in edges[1:-1] if e is not None]) or []
    return {"edges": edges, "counts": [round(v * s.count) for v in shares]}


def _display_histogram(ref: drift_mod.ColumnSummary | None, cur: drift_mod.ColumnSummary, bins: int = 30,
                       ) -> dict[str, Any]:
    """Small, fixed-size histograms of both sides for the HTML report."""
    sides = [s for s in (ref, cur) if s is not None and s.count]
    if not sides:
        return {}
    if all(s.categories is not None for s in sides) and (
        ref is None or len(ref.categories or {}) <= DISPLAY_CATEGORIES
    ):
        cats = category_order({k for s in sides for k in (s.categories or {})})[:30]

        def per_value(s: drift_mod.ColumnSummary | None) -> list[float] | None:
            if s is None or not s.count or s.categories is None:
                return None
            total = sum(s.categories.values()) or 1
            return [round(s.categories.get(c, 0) / total, 6) for c in cats]

        return {"categories": cats, "reference": per_value(ref), "current": per_value(cur)}
    lo = min(q for s in sides for q in drift_mod.quantiles(s, [0.005]) if q is not None)
    hi = max(q for s in sides for q in drift_mod.quantiles(s, [0.995]) if q is not None)
    if hi <= lo:
        hi = lo + 1.0
    edges = [lo + (hi - lo) * i / bins for i in range(bins + 1)]
    return {"edges": [round(e, 6) for e in edges], "reference": _shares(ref, edges[1:-1]),
            "current": _shares(cur, edges[1:-1])}


# --- the reference profile -------------------------------------------------------------------------


def column_record(summary: drift_mod.ColumnSummary, role: str) -> dict[str, Any]:
    """What every profile and manifest stores per column: readable stats plus the mergeable summary."""
    return {"role": role, **drift_mod.describe_column(summary), "summary": summary.to_dict()}


@dataclasses.dataclass
class Profile:
    """A reference profile: statistics of trusted data, made once and reused every night."""

    created_at: str
    batchserve_version: str
    source: dict[str, Any]
    model: dict[str, Any] | None
    features: list[str]
    predictions: list[str]
    columns: dict[str, dict[str, Any]]
    schema: str = PROFILE_SCHEMA_NAME
    schema_version: int = PROFILE_SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return schema_first(self)


def profile_dumps(profile: Profile) -> str:
    return strict_dumps(profile.to_dict(), 1)


def profile_json_schema() -> dict[str, Any]:
    """The committed JSON Schema of the reference profile."""
    return schema_text("reference-profile.v1.json")


@dataclasses.dataclass(frozen=True)
class Reference:
    """Column summaries to compare against, from a profile or an earlier run's manifest."""

    kind: str
    uri: str
    sha256: str
    rows: int
    summaries: dict[str, drift_mod.ColumnSummary]


def summaries_of(columns: Mapping[str, Mapping[str, Any]], uri: str) -> dict[str, drift_mod.ColumnSummary]:
    try:
        return {name: drift_mod.ColumnSummary.from_dict(col["summary"]) for name, col in columns.items()}
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
        raise ConfigError(f"reference has malformed column statistics ({exc})", path=uri) from None


def reference_from_profile(data: Mapping[str, Any], uri: str, sha256: str) -> Reference:
    """A parsed profile (any dict) checked against its version and schema, as a :class:`Reference`."""
    version = data.get("schema_version")
    if version != PROFILE_SCHEMA_VERSION:
        raise ConfigError(
            "unsupported reference profile schema_version; rebuild it with `batchserve profile`",
            path=uri, expected=f"schema_version {PROFILE_SCHEMA_VERSION}", found=repr(version),
        )
    check_against_schema(data, profile_json_schema(), "reference profile", uri)
    return Reference("profile", uri, sha256, int(data["source"]["rows"]), summaries_of(data["columns"], uri))


def check_reference_covers(reference: Reference, features: list[str]) -> None:
    missing = [f for f in features if f not in reference.summaries]
    if missing:
        raise SchemaError(
            f"reference has no statistics for feature(s) {', '.join(missing)}; rebuild it with "
            "`batchserve profile` over the same features",
            path=reference.uri,
        )


# --- the drift section, typed ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ReferenceInfo:
    uri: str
    kind: str
    sha256: str
    rows: int


@dataclasses.dataclass(frozen=True)
class ColumnDrift:
    """One feature's or prediction column's statistics, and its metrics against the reference."""

    role: str
    count: int
    nulls: int
    nonfinite: int
    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    quantiles: dict[str, float | None]
    categories: dict[str, int] | None
    summary: dict[str, Any]
    kind: str | None
    psi: float | None
    ks: float | None
    wasserstein: float | None
    js: float | None
    null_rate_change: float | None
    unseen_categories: int | None
    metric: str | None
    threshold: float | None
    drifted: bool
    decided_by: str | None
    histogram: dict[str, Any]
    #: Metric name -> why it has no value (older manifests lack it: empty).
    undefined: dict[str, str] = dataclasses.field(default_factory=dict)
    #: PSI/JS over the values themselves, for numeric columns with few distinct values.
    categorical: dict[str, Any] | None = None
    #: The reference's count, nulls, mean, std, min, p50 and max, shown beside the current ones.
    reference_stats: dict[str, Any] | None = None

    def value(self, metric: str) -> float | None:
        """A metric by name (``psi``, ``ks``, ``wasserstein``, ``js``, ``null_rate_change``)."""
        return getattr(self, metric) if metric in _METRIC_FIELDS else None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for optional in ("categorical", "reference_stats"):
            if d[optional] is None:
                del d[optional]
        return d


_METRIC_FIELDS = ("psi", "ks", "wasserstein", "js", "null_rate_change")


@dataclasses.dataclass(frozen=True)
class DriftSection:
    """The manifest's ``drift``: statistics always, metrics and a verdict when there is a reference."""

    reference: ReferenceInfo | None
    policy: dict[str, Any]
    psi_epsilon: float
    features: dict[str, ColumnDrift]
    predictions: dict[str, ColumnDrift]
    drifted_features: list[str]
    drifted_predictions: list[str]
    drift_share: float | None
    #: Set on resumed runs: which files the statistics cover.
    coverage: str | None = None

    def columns(self) -> dict[str, ColumnDrift]:
        return {**self.features, **self.predictions}

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "reference": dataclasses.asdict(self.reference) if self.reference else None,
            "policy": self.policy,
            "psi_epsilon": self.psi_epsilon,
            "features": {n: c.to_dict() for n, c in self.features.items()},
            "predictions": {n: c.to_dict() for n, c in self.predictions.items()},
            "drifted_features": list(self.drifted_features),
            "drifted_predictions": list(self.drifted_predictions),
            "drift_share": self.drift_share,
        }
        if self.coverage is not None:
            d["coverage"] = self.coverage
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DriftSection:
        ref = d.get("reference")
        return cls(
            reference=ReferenceInfo(**ref) if ref else None,
            policy=dict(d["policy"]),
            psi_epsilon=float(d["psi_epsilon"]),
            features={n: ColumnDrift(**c) for n, c in d["features"].items()},
            predictions={n: ColumnDrift(**c) for n, c in d["predictions"].items()},
            drifted_features=list(d["drifted_features"]),
            drifted_predictions=list(d["drifted_predictions"]),
            drift_share=d.get("drift_share"),
            coverage=d.get("coverage"),
        )


_NO_METRICS: dict[str, Any] = {
    "kind": None, "psi": None, "ks": None, "wasserstein": None, "js": None, "null_rate_change": None,
    "unseen_categories": None, "metric": None, "threshold": None, "drifted": False, "decided_by": None,
}


def _column(name: str, role: str, cur: drift_mod.ColumnSummary, ref: drift_mod.ColumnSummary | None,
            policy: drift_mod.DriftPolicy) -> ColumnDrift:
    entry = column_record(cur, role)
    entry.update(drift_mod.compare_columns(ref, cur, name, policy) if ref is not None else _NO_METRICS)
    entry["histogram"] = _display_histogram(ref, cur)
    if ref is not None:
        stats = drift_mod.describe_column(ref)
        entry["reference_stats"] = {k: stats[k] for k in ("count", "nulls", "mean", "std", "min", "max")} | {
            "p50": stats["quantiles"]["p50"]}
    return ColumnDrift(**entry)


def drift_section(
    current: Mapping[str, drift_mod.ColumnSummary],
    features: list[str],
    predictions: list[str],
    reference: Reference | None,
    policy: drift_mod.DriftPolicy,
) -> DriftSection:
    """The drift section of a run: every column's statistics, and metrics when there is a reference."""

    def block(names: list[str], role: str) -> dict[str, ColumnDrift]:
        return {
            n: _column(n, role, current.get(n, drift_mod.ColumnSummary()),
                       reference.summaries.get(n) if reference else None, policy)
            for n in names
        }

    feats, preds = block(features, "feature"), block(predictions, "prediction")
    drifted = [n for n, c in feats.items() if c.drifted]
    return DriftSection(
        reference=None if reference is None else ReferenceInfo(reference.uri, reference.kind, reference.sha256,
                                                               reference.rows),
        policy=policy.as_dict(),
        psi_epsilon=drift_mod.PSI_EPSILON,
        features=feats,
        predictions=preds,
        drifted_features=drifted,
        drifted_predictions=[n for n, c in preds.items() if c.drifted],
        drift_share=(len(drifted) / len(feats) if feats else 0.0) if reference is not None else None,
    )
