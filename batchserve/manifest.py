"""The run manifest: a typed, versioned record of what a run did (dbt's run results idea).

``OUTPUT/_manifest.json`` is a contract that other tools read (Airflow sensors,
the next night's ``--reference``), so it carries ``schema`` and
``schema_version``; older versions are read through :data:`UPGRADES`, and
``schemas/run-manifest.v1.json`` is kept in step with these dataclasses by a test.
Secrets never get here: the config is recorded through ``ScoreConfig.redacted``.

Example::

    >>> m = loads(dumps(example_manifest()))
    >>> m.schema_version
    1
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterable
from importlib import resources
from typing import Any

from batchserve import drift as drift_mod
from batchserve.errors import ConfigError, SchemaError

__all__ = [
    "SCHEMA_NAME",
    "SCHEMA_VERSION",
    "FileEntry",
    "FailureEntry",
    "WorkerInfo",
    "EngineInfo",
    "RunInfo",
    "ModelSection",
    "Totals",
    "Manifest",
    "dumps",
    "loads",
    "json_schema",
    "profile_json_schema",
    "strict",
    "category_order",
    "example_manifest",
    "UPGRADES",
    "PROFILE_SCHEMA_NAME",
    "PROFILE_SCHEMA_VERSION",
    "Profile",
    "Reference",
    "profile_dumps",
    "load_reference",
    "drift_section",
    "column_record",
]

SCHEMA_NAME = "batchserve.run-manifest"
SCHEMA_VERSION = 1


def _schema_first(artifact: Any) -> dict[str, Any]:
    """An artifact as a dict with its schema identity first: whoever opens the file sees what it is."""
    data = dataclasses.asdict(artifact)
    return {"schema": data.pop("schema"), "schema_version": data.pop("schema_version"), **data}


@dataclasses.dataclass
class FileEntry:
    path: str
    relpath: str
    rows: int
    bytes: int
    #: Outputs: ``sha256:<hex>`` of the committed file, so readers and --resume can verify it.
    checksum: str | None = None
    #: Inputs: mtime or etag when listed, so --resume can tell whether the input changed.
    version: str | None = None
    #: Outputs: "scored" or "reused" (by --resume), and why a file was rescored.
    status: str | None = None
    note: str | None = None


@dataclasses.dataclass
class FailureEntry:
    """A file that was skipped under --on-error skip, and why."""

    path: str
    relpath: str
    error: str


@dataclasses.dataclass
class WorkerInfo:
    address: str
    name: str
    provider: str
    device: str
    gpu_id: int | None
    intra_op_threads: int
    fallback_reason: str | None
    setup_seconds: float
    cuda_visible_devices: str | None


@dataclasses.dataclass
class EngineInfo:
    #: "local" (we started a cluster) or "scheduler" (an existing one).
    kind: str
    address: str
    workers: int
    device: str
    per_worker: list[WorkerInfo]


@dataclasses.dataclass
class RunInfo:
    id: str
    started_at: str
    finished_at: str | None
    #: "succeeded", "failed", "interrupted" or "running" (a journal written while committing).
    status: str
    batchserve_version: str
    config: dict[str, Any]
    engine: EngineInfo | None
    error: str | None = None


@dataclasses.dataclass
class ModelSection:
    uri: str
    resolved_uri: str
    version: str | None
    sha256: str
    bytes: int
    producer_name: str
    producer_version: str
    ir_version: int
    opset: dict[str, int]
    graph_name: str
    metadata_props: dict[str, str]
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    features: list[str]
    feature_source: str


@dataclasses.dataclass
class Totals:
    files: int
    rows: int
    bytes_in: int
    bytes_out: int
    seconds: float
    rows_per_second: float
    #: Summed over tasks; they overlap, so their sum can exceed wall time.
    read_seconds: float
    infer_seconds: float
    write_seconds: float


@dataclasses.dataclass
class Manifest:
    run: RunInfo
    model: ModelSection
    inputs: list[FileEntry]
    outputs: list[FileEntry]
    totals: Totals
    #: Column statistics and drift metrics; ``None`` with --no-drift.
    drift: dict[str, Any] | None = None
    #: The result-relevant settings (model digest, features, keep, prefix) resume compares.
    fingerprint: str | None = None
    #: Files skipped under --on-error skip, with their errors.
    failures: list[FailureEntry] = dataclasses.field(default_factory=list)
    schema: str = SCHEMA_NAME
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return _schema_first(self)


def strict(value: Any) -> Any:
    """The same data with every NaN or infinity as null: manifests and profiles are strict JSON
    (Node's JSON.parse and jq refuse or mangle ``Infinity``); where a metric is undefined, the
    drift section says why in ``undefined``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict(v) for v in value]
    return value


def _strict_dumps(data: Any, indent: int) -> str:
    return json.dumps(strict(data), indent=indent, allow_nan=False) + "\n"


def dumps(manifest: Manifest) -> str:
    return _strict_dumps(manifest.to_dict(), 2)


def _schema_text(name: str) -> dict[str, Any]:
    return dict(json.loads(resources.files("batchserve").joinpath(f"schemas/{name}").read_text("utf-8")))


def _check_against_schema(data: Any, schema: dict[str, Any], what: str, source: str | None) -> None:
    """Validate an artifact where it enters: a wrong type is one line naming the field, never a crash later."""
    import jsonschema  # only readers of artifacts pay for the import

    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(data))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise ConfigError(f"{what} is malformed at {where}: {error.message[:200]}", path=source)


def _files(items: list[dict[str, Any]]) -> list[FileEntry]:
    return [FileEntry(**i) for i in items]


def _from_v1(data: dict[str, Any]) -> Manifest:
    run = dict(data["run"])
    engine = run.get("engine")
    if engine is not None:
        engine = EngineInfo(**{**engine, "per_worker": [WorkerInfo(**w) for w in engine["per_worker"]]})
    run["engine"] = engine
    return Manifest(
        run=RunInfo(**run),
        model=ModelSection(**data["model"]),
        inputs=_files(data["inputs"]),
        outputs=_files(data["outputs"]),
        totals=Totals(**data["totals"]),
        drift=data.get("drift"),
        fingerprint=data.get("fingerprint"),
        failures=[FailureEntry(**f) for f in data.get("failures", [])],
    )


#: schema_version -> function lifting a dict of that version to the next one.
UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}


def loads(text: str, *, source: str | None = None) -> Manifest:
    """Parse a manifest of this or an older schema version."""
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ConfigError(f"manifest is not valid JSON: {str(exc)[:120]}", path=source) from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA_NAME:
        raise ConfigError(f"not a batchserve run manifest (schema is not {SCHEMA_NAME!r})", path=source)
    version = data.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION or (
        version < SCHEMA_VERSION and version not in UPGRADES
    ):
        raise ConfigError(
            f"unsupported manifest schema_version {version!r}; this batchserve reads up to {SCHEMA_VERSION}",
            path=source, expected=f"schema_version <= {SCHEMA_VERSION}", found=repr(version),
        )
    while version < SCHEMA_VERSION:
        data = UPGRADES[version](data)
        version = data["schema_version"]
    _check_against_schema(data, json_schema(), "manifest", source)
    try:
        return _from_v1(data)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(f"manifest is missing or has unexpected fields: {exc}", path=source) from None


def json_schema() -> dict[str, Any]:
    """The committed JSON Schema for the current version."""
    return _schema_text("run-manifest.v1.json")


def profile_json_schema() -> dict[str, Any]:
    """The committed JSON Schema of the reference profile."""
    return _schema_text("reference-profile.v1.json")


def example_manifest() -> Manifest:
    """A small valid manifest, for docs and tests of readers."""
    return Manifest(
        run=RunInfo(
            id="20261121T000000Z-abcdef", started_at="2026-11-21T00:00:00Z",
            finished_at="2026-11-21T00:00:01Z", status="succeeded", batchserve_version="0.1.0",
            config={"model": "m.onnx"},
            engine=EngineInfo("local", "tcp://127.0.0.1:1", 1, "auto", [
                WorkerInfo("tcp://127.0.0.1:2", "0", "CPUExecutionProvider", "cpu", None, 2,
                           "no GPU visible to this worker", 0.1, None)
            ]),
        ),
        model=ModelSection(
            uri="m.onnx", resolved_uri="m.onnx", version=None, sha256="0" * 64, bytes=1,
            producer_name="skl2onnx", producer_version="1.0", ir_version=8, opset={"ai.onnx": 17},
            graph_name="g", metadata_props={}, inputs=[], outputs=[], features=["a"],
            feature_source="flag",
        ),
        inputs=[FileEntry("in/a.parquet", "a.parquet", 1, 10)],
        outputs=[FileEntry("out/a.parquet", "a.parquet", 1, 12)],
        totals=Totals(1, 1, 10, 12, 1.0, 1.0, 0.1, 0.1, 0.1),
    )


# --- reference profiles and the drift section ---------------------------------------------------

PROFILE_SCHEMA_NAME = "batchserve.reference-profile"
PROFILE_SCHEMA_VERSION = 1


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
        return _schema_first(self)


def profile_dumps(profile: Profile) -> str:
    return _strict_dumps(profile.to_dict(), 1)


@dataclasses.dataclass(frozen=True)
class Reference:
    """Column summaries to compare against, from a profile or an earlier run's manifest."""

    kind: str
    uri: str
    sha256: str
    rows: int
    summaries: dict[str, drift_mod.ColumnSummary]


def load_reference(text: str, uri: str, sha256: str) -> Reference:
    """Parse a reference profile or a run manifest (whose drift section holds the same summaries)."""
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ConfigError(f"reference is not valid JSON: {str(exc)[:120]}", path=uri) from None
    schema = data.get("schema") if isinstance(data, dict) else None
    if schema == PROFILE_SCHEMA_NAME:
        version = data.get("schema_version")
        if version != PROFILE_SCHEMA_VERSION:
            raise ConfigError(
                "unsupported reference profile schema_version; rebuild it with `batchserve profile`",
                path=uri, expected=f"schema_version {PROFILE_SCHEMA_VERSION}", found=repr(version),
            )
        _check_against_schema(data, profile_json_schema(), "reference profile", uri)
        columns = data["columns"]
        rows = int(data["source"]["rows"])
        kind = "profile"
    elif schema == SCHEMA_NAME:
        m = loads(text, source=uri)
        if m.run.status != "succeeded":
            raise ConfigError(
                f"that run manifest is from a run that did not succeed (status {m.run.status}); its statistics "
                "cover only part of the data: use a succeeded run's manifest or a profile",
                path=uri,
            )
        if not m.drift:
            raise ConfigError("that run manifest has no drift statistics (run was scored with --no-drift)", path=uri)
        columns = {**m.drift.get("features", {}), **m.drift.get("predictions", {})}
        rows = m.totals.rows
        kind = "manifest"
    else:
        raise ConfigError(
            f"reference must be a {PROFILE_SCHEMA_NAME} or a {SCHEMA_NAME} file, found schema {schema!r}", path=uri
        )
    try:
        summaries = {name: drift_mod.ColumnSummary.from_dict(col["summary"]) for name, col in columns.items()}
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
        raise ConfigError(f"reference has malformed column statistics ({exc})", path=uri) from None
    return Reference(kind, uri, sha256, rows, summaries)


def check_reference_covers(reference: Reference, features: list[str]) -> None:
    missing = [f for f in features if f not in reference.summaries]
    if missing:
        raise SchemaError(
            f"reference has no statistics for feature(s) {', '.join(missing)}; rebuild it with "
            "`batchserve profile` over the same features",
            path=reference.uri,
        )


def category_order(keys: Iterable[str]) -> list[str]:
    """Category labels in reading order: numerically when they are all numbers (0, 1, 2, ..., 10, 11,
    not 0, 1, 10, 11, 2), else as text."""
    keys = list(keys)
    try:
        return sorted(keys, key=float)
    except ValueError:
        return sorted(keys)


def _display_histogram(ref: drift_mod.ColumnSummary | None, cur: drift_mod.ColumnSummary, bins: int = 30) -> dict:
    """Small, fixed-size histograms of both sides for the HTML report."""
    sides = [s for s in (ref, cur) if s is not None and s.count]
    if not sides:
        return {}
    if all(s.categories is not None for s in sides) and (ref is None or len(ref.categories or {}) <= 20):
        cats = category_order({k for s in sides for k in (s.categories or {})})[:30]

        def shares(s: drift_mod.ColumnSummary | None) -> list[float] | None:
            if s is None or not s.count or s.categories is None:
                return None
            total = sum(s.categories.values()) or 1
            return [round(s.categories.get(c, 0) / total, 6) for c in cats]

        return {"categories": cats, "reference": shares(ref), "current": shares(cur)}
    lo = min(q for s in sides for q in drift_mod.quantiles(s, [0.005]) if q is not None)
    hi = max(q for s in sides for q in drift_mod.quantiles(s, [0.995]) if q is not None)
    if hi <= lo:
        hi = lo + 1.0
    edges = [lo + (hi - lo) * i / bins for i in range(bins + 1)]

    def hist(s: drift_mod.ColumnSummary | None) -> list[float] | None:
        if s is None or not s.count:
            return None
        return [round(float(v), 6) for v in drift_mod.bin_shares(s, edges[1:-1])]

    return {"edges": [round(e, 6) for e in edges], "reference": hist(ref), "current": hist(cur)}


def drift_section(
    current: dict[str, drift_mod.ColumnSummary],
    features: list[str],
    predictions: list[str],
    reference: Reference | None,
    policy: drift_mod.DriftPolicy,
) -> dict[str, Any]:
    """The manifest's drift section: statistics always, metrics when there is a reference."""

    def block(names: list[str], role: str) -> dict[str, Any]:
        out = {}
        for name in names:
            cur = current.get(name, drift_mod.ColumnSummary())
            ref = reference.summaries.get(name) if reference else None
            entry = column_record(cur, role)
            if ref is not None:
                entry.update(drift_mod.compare_columns(ref, cur, name, policy))
            else:
                entry.update({"kind": None, "psi": None, "ks": None, "wasserstein": None, "js": None,
                              "null_rate_change": None, "unseen_categories": None, "metric": None,
                              "threshold": None, "drifted": False, "decided_by": None})
            entry["histogram"] = _display_histogram(ref, cur)
            out[name] = entry
        return out

    feats = block(features, "feature")
    preds = block(predictions, "prediction")
    drifted = [n for n, e in feats.items() if e["drifted"]]
    return {
        "reference": None if reference is None else {
            "uri": reference.uri, "kind": reference.kind, "sha256": reference.sha256, "rows": reference.rows,
        },
        "policy": policy.as_dict(),
        "psi_epsilon": drift_mod.PSI_EPSILON,
        "features": feats,
        "predictions": preds,
        "drifted_features": drifted,
        "drifted_predictions": [n for n, e in preds.items() if e["drifted"]],
        "drift_share": (len(drifted) / len(feats) if feats else 0.0) if reference is not None else None,
    }
