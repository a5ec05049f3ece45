"""The run manifest: a typed, versioned record of what a run did (dbt's run results idea).

``OUTPUT/_manifest.json`` is a contract that other tools read (Airflow sensors,
the next night's ``--reference``), so it carries ``schema`` and
``schema_version``; older versions are read through :data:`UPGRADES`, and
``schemas/run-manifest.v2.json`` is kept in step with these dataclasses by a test.
Secrets never get here: the config is recorded through ``ScoreConfig.redacted``.

Example::

    >>> m = loads(dumps(example_manifest()))
    >>> m.schema_version
    1
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

from batchserve.compare import ChallengerSection
from batchserve.errors import ConfigError
from batchserve.reference import (
    PROFILE_SCHEMA_NAME,
    DriftSection,
    Reference,
    check_against_schema,
    reference_from_profile,
    schema_first,
    schema_text,
    strict_dumps,
    summaries_of,
)

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
    "example_manifest",
    "UPGRADES",
    "load_reference",
]

SCHEMA_NAME = "batchserve.run-manifest"
SCHEMA_VERSION = 2


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
    #: ``--batch-size auto``: rows per session.run the probe chose, and rows/s per size it tried.
    infer_batch: int | None = None
    batch_probe: dict[str, float] | None = None
    #: provider -> operator -> nodes it ran (from ORT's profile of the warm-up run).
    node_placement: dict[str, dict[str, int]] | None = None
    #: A GPU session's IO binding: inputs staged in ``pinned`` (page-locked) or ``pageable`` host memory
    #: and copied to the device on the reader thread; None where there is none (a CPU session).
    io_binding: str | None = None


@dataclasses.dataclass
class EngineInfo:
    #: "local" (we started a cluster of worker processes), "local-threads" (a small job: one worker
    #: thread in this process, no Dask and no process start-up; address ``inproc://host/pid``),
    #: "local-cuda" (dask-cuda's LocalCUDACluster, one worker per GPU) or "scheduler" (an existing
    #: cluster).
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
    #: The audit event that last moved the alias the model was named by: who promoted it, when, why.
    alias_event: dict[str, Any] | None = None


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
    drift: DriftSection | None = None
    #: The result-relevant settings (model digest, features, keep, prefix) resume compares.
    fingerprint: str | None = None
    #: Files skipped under --on-error skip, with their errors.
    failures: list[FailureEntry] = dataclasses.field(default_factory=list)
    #: With --challenger: the second model, where its output went, and how its predictions differ.
    challenger: ChallengerSection | None = None
    #: What the run owned in its output: ``{"filters": [...], "fixed_keys": {...}}``; no filters, the whole
    #: output. Outputs outside it were neither written, removed nor checked by this run.
    scope: dict[str, Any] = dataclasses.field(default_factory=lambda: {"filters": [], "fixed_keys": {}})
    #: Outputs of earlier runs inside the scope whose input is gone, removed by this run.
    removed: list[str] = dataclasses.field(default_factory=list)
    #: A challenger's output: the champion output it was scored beside (its comparison lives there).
    shadow_of: str | None = None
    schema: str = SCHEMA_NAME
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        data = schema_first(self)
        data["drift"] = self.drift.to_dict() if self.drift is not None else None
        data["challenger"] = self.challenger.to_dict() if self.challenger is not None else None
        return data


def dumps(manifest: Manifest) -> str:
    return strict_dumps(manifest.to_dict(), 2)


def _files(items: list[dict[str, Any]]) -> list[FileEntry]:
    return [FileEntry(**i) for i in items]


def _from_current(data: dict[str, Any]) -> Manifest:
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
        drift=DriftSection.from_dict(data["drift"]) if data.get("drift") else None,
        fingerprint=data.get("fingerprint"),
        failures=[FailureEntry(**f) for f in data.get("failures", [])],
        challenger=ChallengerSection.from_dict(data["challenger"]) if data.get("challenger") else None,
        scope=dict(data["scope"]),
        removed=list(data["removed"]),
        shadow_of=data["shadow_of"],
    )


def _v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    """v2 records the run's scope (``--filter``) and the stale outputs it removed. A v1 run had no
    scope: it owned its whole output, and its removals went unrecorded."""
    return {**data, "schema_version": 2, "scope": {"filters": [], "fixed_keys": {}}, "removed": [], "shadow_of": None}


#: schema_version -> function lifting a dict of that version to the next one.
UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _v1_to_v2}


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
    check_against_schema(data, json_schema(), "manifest", source)
    try:
        return _from_current(data)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(f"manifest is missing or has unexpected fields: {exc}", path=source) from None


def json_schema() -> dict[str, Any]:
    """The committed JSON Schema for the current version."""
    return schema_text("run-manifest.v2.json")


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


def load_reference(text: str, uri: str, sha256: str) -> Reference:
    """Parse a reference: a profile, or a succeeded run's manifest (its drift section holds the same
    summaries). Lives here because reading a manifest is this module's job."""
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ConfigError(f"reference is not valid JSON: {str(exc)[:120]}", path=uri) from None
    schema = data.get("schema") if isinstance(data, dict) else None
    if schema == PROFILE_SCHEMA_NAME:
        return reference_from_profile(data, uri, sha256)
    if schema != SCHEMA_NAME:
        raise ConfigError(
            f"reference must be a {PROFILE_SCHEMA_NAME} or a {SCHEMA_NAME} file, found schema {schema!r}", path=uri
        )
    m = loads(text, source=uri)
    if m.run.status != "succeeded":
        raise ConfigError(
            f"that run manifest is from a run that did not succeed (status {m.run.status}); its statistics "
            "cover only part of the data: use a succeeded run's manifest or a profile",
            path=uri,
        )
    if m.drift is None:
        raise ConfigError("that run manifest has no drift statistics (run was scored with --no-drift)", path=uri)
    columns = {n: {"summary": c.summary} for n, c in m.drift.columns().items()}
    return Reference("manifest", uri, sha256, m.totals.rows, summaries_of(columns, uri))
