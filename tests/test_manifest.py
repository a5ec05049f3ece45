"""The manifest is a contract: JSON Schema in step with the code, round trips, versions."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

import batchserve
from batchserve import manifest
from batchserve.errors import ConfigError
from tests.conftest import make_table, write_dataset


def _schema_props(schema: dict, node: dict) -> set[str]:
    if "$ref" in node:
        node = schema["$defs"][node["$ref"].split("/")[-1]]
    return set(node["properties"])


def test_json_schema_matches_dataclasses() -> None:
    s = manifest.json_schema()
    top = {f.name for f in dataclasses.fields(manifest.Manifest)}
    assert set(s["properties"]) == top and set(s["required"]) == top
    pairs = [
        (s["properties"]["run"], manifest.RunInfo),
        (s["properties"]["run"]["properties"]["engine"], manifest.EngineInfo),
        (s["properties"]["run"]["properties"]["engine"]["properties"]["per_worker"]["items"], manifest.WorkerInfo),
        (s["properties"]["model"], manifest.ModelSection),
        (s["properties"]["totals"], manifest.Totals),
        (s["properties"]["inputs"]["items"], manifest.FileEntry),
    ]
    for node, cls in pairs:
        fields = {f.name for f in dataclasses.fields(cls)}
        assert _schema_props(s, node) == fields, cls.__name__


def test_real_run_manifest_validates(tmp_path: Path, cluster: str, model_dir: dict) -> None:
    write_dataset(tmp_path / "in", {"a.parquet": make_table(100)})
    res = batchserve.score(model=str(model_dir["logreg"][0]), input=str(tmp_path / "in"),
                           output=str(tmp_path / "out"), scheduler=cluster)
    data = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    jsonschema.validate(data, manifest.json_schema())
    assert data["schema"] == "batchserve.run-manifest" and data["schema_version"] == 1
    assert list(data)[:2] == ["schema", "schema_version"]
    assert data["run"]["status"] == "succeeded"
    assert data["drift"]["reference"] is None and data["drift"]["features"]["f0"]["count"] == 100
    assert data["inputs"][0]["rows"] == 100 and data["outputs"][0]["rows"] == 100
    assert manifest.loads(manifest.dumps(res.manifest)) == res.manifest


@given(rows=st.integers(0, 10**9), seconds=st.floats(0, 1e6), status=st.sampled_from(["succeeded", "failed"]))
def test_round_trip_property(rows: int, seconds: float, status: str) -> None:
    m = manifest.example_manifest()
    m.totals.rows = rows
    m.totals.seconds = seconds
    m.run.status = status
    text = manifest.dumps(m)
    jsonschema.validate(json.loads(text), manifest.json_schema())
    assert manifest.loads(text) == m


def test_unknown_versions_and_foreign_json_are_refused() -> None:
    data = manifest.example_manifest().to_dict()
    data["schema_version"] = 99
    with pytest.raises(ConfigError, match="unsupported manifest schema_version 99"):
        manifest.loads(json.dumps(data))
    with pytest.raises(ConfigError, match="not a batchserve run manifest"):
        manifest.loads('{"hello": 1}')
    with pytest.raises(ConfigError, match="not valid JSON"):
        manifest.loads("{")
