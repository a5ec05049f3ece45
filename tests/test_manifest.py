"""The manifest is a contract: JSON Schema in step with the code, round trips, versions."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import batchserve
from batchserve import manifest, reference
from batchserve.errors import ConfigError
from tests.conftest import make_table, write_dataset


def _schema_props(schema: dict, node: dict) -> set[str]:
    if "$ref" in node:
        node = schema["$defs"][node["$ref"].split("/")[-1]]
    return set(node["properties"])


def test_json_schema_matches_dataclasses() -> None:
    s = manifest.json_schema()
    top = {f.name for f in dataclasses.fields(manifest.Manifest)}
    added_since_v1 = {"challenger"}  # optional, so files written before them stay valid v1
    assert set(s["properties"]) == top and set(s["required"]) == top - added_since_v1
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
    assert data["schema"] == "batchserve.run-manifest" and data["schema_version"] == 2
    assert list(data)[:2] == ["schema", "schema_version"]
    assert data["run"]["status"] == "succeeded"
    assert data["drift"]["reference"] is None and data["drift"]["features"]["f0"]["count"] == 100
    assert data["inputs"][0]["rows"] == 100 and data["outputs"][0]["rows"] == 100
    assert manifest.loads(manifest.dumps(res.manifest)) == res.manifest


#: Built once: jsonschema.validate() checks the schema itself against the meta-schema on every call,
#: which was most of this property test's time (6 to 17 s for its 100 examples).
_MANIFEST_VALIDATOR = jsonschema.Draft202012Validator(manifest.json_schema())


@given(rows=st.integers(0, 10**9), seconds=st.floats(0, 1e6), status=st.sampled_from(["succeeded", "failed"]))
def test_round_trip_property(rows: int, seconds: float, status: str) -> None:
    m = manifest.example_manifest()
    m.totals.rows = rows
    m.totals.seconds = seconds
    m.run.status = status
    text = manifest.dumps(m)
    _MANIFEST_VALIDATOR.validate(json.loads(text))
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


# --- artifacts written by an earlier batchserve, read by this one -------------------------------

FIXTURES = Path(__file__).parent / "fixtures"


def test_a_v1_manifest_written_by_batchserve_0_1_0_reads_back() -> None:
    """tests/fixtures/run-manifest.v1.json was written by batchserve 0.1.0 before issue 7 (no
    `undefined`/`categorical` drift fields yet): every later reader must still take it."""
    text = (FIXTURES / "run-manifest.v1.json").read_text()
    m = manifest.loads(text, source="fixture")
    assert m.run.status == "succeeded" and m.totals.rows == 20_000 and len(m.outputs) == 2
    assert m.drift is not None and m.drift.reference is not None and m.drift.reference.kind == "profile"
    assert m.drift.features["amount"].undefined == {}  # a field added since: defaulted for older files
    assert manifest.loads(manifest.dumps(m)) == m
    ref = manifest.load_reference(text, "fixture", "0" * 64)
    assert ref.kind == "manifest" and ref.rows == 20_000 and "amount" in ref.summaries


def test_a_v1_profile_written_by_batchserve_0_1_0_reads_back_and_matches_its_schema() -> None:
    text = (FIXTURES / "reference-profile.v1.json").read_text()
    jsonschema.validate(json.loads(text), reference.profile_json_schema())
    ref = manifest.load_reference(text, "fixture", "0" * 64)
    assert ref.kind == "profile" and ref.rows == 20_000
    assert {"amount", "hour", "probabilities.1"} <= set(ref.summaries)


def test_profile_schema_matches_the_dataclass() -> None:
    s = reference.profile_json_schema()
    fields = {f.name for f in dataclasses.fields(reference.Profile)}
    assert set(s["properties"]) == fields and set(s["required"]) == fields


def test_older_versions_go_through_the_upgrade_chain(monkeypatch: pytest.MonkeyPatch) -> None:
    """The UPGRADES path, exercised: pretend this batchserve writes v3; a v1 file is lifted 1 -> 2 -> 3."""
    calls: list[int] = []

    def v2_to_v3(data: dict) -> dict:
        calls.append(data["schema_version"])
        return {**data, "schema_version": 3}

    schema_v3 = manifest.json_schema()
    schema_v3["properties"]["schema_version"] = {"const": 3}
    monkeypatch.setattr(manifest, "SCHEMA_VERSION", 3)
    monkeypatch.setattr(manifest, "UPGRADES", {**manifest.UPGRADES, 2: v2_to_v3})
    monkeypatch.setattr(manifest, "json_schema", lambda: schema_v3)
    m = manifest.loads((FIXTURES / "run-manifest.v1.json").read_text())
    assert calls == [2] and m.totals.rows == 20_000 and m.scope == {"filters": [], "fixed_keys": {}}
    monkeypatch.setattr(manifest, "UPGRADES", {})
    with pytest.raises(ConfigError, match="unsupported manifest schema_version 1") as info:
        manifest.loads((FIXTURES / "run-manifest.v1.json").read_text())
    assert (info.value.expected, info.value.found) == ("schema_version <= 3", "1")


@settings(max_examples=60, deadline=None)
@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=30,
))
def test_artifact_json_is_strict_json_of_the_same_data(data: object) -> None:
    """The laid-out writer (records one per line, the C encoder) says exactly what json says, with
    every NaN and infinity as null, at any nesting."""
    from batchserve.reference import strict, strict_dumps

    text = strict_dumps(data, 2)
    assert json.loads(text) == json.loads(json.dumps(strict(data)))
    constants: list[str] = []  # NaN, Infinity, -Infinity: not JSON (a key or string may still spell them)
    json.loads(text, parse_constant=constants.append)
    assert constants == []


def test_a_manifest_lists_one_file_per_line() -> None:
    """People diff and grep manifests: one line per input and output file, settings one per line."""
    m = manifest.example_manifest()
    m.run.config = {"a": 1, "b": [1, 2]}
    lines = manifest.dumps(m).splitlines()
    records = [line for line in lines if '"relpath": ' in line]
    assert len(records) == len(m.inputs) + len(m.outputs) == 2
    assert all(line.startswith("    {") and line.rstrip(",").endswith("}") for line in records)
    assert '      "a": 1,' in lines and '      "b": [1, 2]' in lines
