"""Drift through the CLI: profile, score --reference, exit 3, manifests as references, the report."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from batchserve import manifest
from tests.conftest import SAMPLE_DATA, SAMPLE_MODEL, screenshot
from tests.test_cli import assert_one_error_line, run_cli

#: Every test here runs the real console script or real processes.
pytestmark = pytest.mark.slow

SHIFTED = {"amount", "distance_km"}


@pytest.fixture(scope="module")
def drifted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample with two features shifted and everything else untouched."""
    root = tmp_path_factory.mktemp("drifted")
    for f in sorted(SAMPLE_DATA.rglob("*.parquet")):
        t = pq.read_table(f)
        t = t.set_column(t.schema.get_field_index("amount"), "amount", pc.multiply(t.column("amount"), 1.8))
        t = t.set_column(t.schema.get_field_index("distance_km"), "distance_km", pc.add(t.column("distance_km"), 15.0))
        out = root / f.relative_to(SAMPLE_DATA)
        out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(t, out)
    return root


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, cluster: str) -> Path:
    path = tmp_path_factory.mktemp("ref") / "profile.json"
    proc = run_cli("profile", "--input", str(SAMPLE_DATA), "--model", str(SAMPLE_MODEL), "--output", str(path),
                   "--scheduler", cluster)
    assert proc.returncode == 0, proc.stderr
    assert "profiled 100,000 rows in 10 file(s): 8 feature(s), 3 prediction column(s)" in proc.stdout
    return path


def test_profile_is_a_versioned_artifact(reference: Path) -> None:
    data = json.loads(reference.read_text())
    assert data["schema"] == manifest.PROFILE_SCHEMA_NAME and data["schema_version"] == 1
    assert data["source"]["rows"] == 100_000 and len(data["model"]["sha256"]) == 64
    amount = data["columns"]["amount"]
    for key in ("count", "nulls", "mean", "std", "min", "max", "quantiles", "histogram", "summary"):
        assert key in amount
    assert len(amount["histogram"]["counts"]) == 20 and sum(amount["histogram"]["counts"]) == pytest.approx(100_000, abs=20)
    assert data["columns"]["is_online"]["categories"] is not None
    assert data["predictions"] == ["label", "probabilities.0", "probabilities.1"]


def test_profile_without_model_takes_numeric_columns(tmp_path: Path, cluster: str) -> None:
    out = tmp_path / "p.json"
    proc = run_cli("profile", "--input", str(SAMPLE_DATA), "--output", str(out), "--scheduler", cluster)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert "transaction_id" not in data["features"] and "amount" in data["features"] and data["model"] is None


def test_score_flags_the_shifted_features_and_no_others(tmp_path: Path, drifted: Path, reference: Path,
                                                         cluster: str) -> None:
    out = tmp_path / "out"
    proc = run_cli("score", "--model", str(SAMPLE_MODEL), "--input", str(drifted), "--output", str(out),
                   "--reference", str(reference), "--scheduler", cluster, "--fail-on-drift")
    assert proc.returncode == 3, proc.stderr
    line = assert_one_error_line(proc, "drift detected in 2 of 8 features", "amount (psi", "distance_km (psi",
                                 "outputs are committed")
    assert "hour" not in line
    assert (out / "_SUCCESS").exists() and len(list(out.rglob("*.parquet"))) == 10
    d = json.loads((out / "_manifest.json").read_text())["drift"]
    assert set(d["drifted_features"]) == SHIFTED and d["drift_share"] == 0.25
    assert d["reference"]["kind"] == "profile" and d["reference"]["rows"] == 100_000
    for name, e in d["features"].items():
        assert e["drifted"] == (name in SHIFTED), name
        for key in ("count", "nulls", "mean", "std", "min", "max", "quantiles", "psi", "ks", "wasserstein", "js",
                    "null_rate_change", "drifted", "decided_by"):
            assert key in e
    assert d["features"]["amount"]["decided_by"] == "psi"
    assert "probabilities.1" in d["predictions"]
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(json.loads((out / "_manifest.json").read_text()), manifest.json_schema())


def test_max_drift_share_and_per_feature_threshold(tmp_path: Path, drifted: Path, reference: Path,
                                                   cluster: str) -> None:
    proc = run_cli("score", "--model", str(SAMPLE_MODEL), "--input", str(drifted), "--output", str(tmp_path / "a"),
                   "--reference", str(reference), "--scheduler", cluster, "--fail-on-drift",
                   "--max-drift-share", "0.3")
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("score", "--model", str(SAMPLE_MODEL), "--input", str(drifted), "--output", str(tmp_path / "b"),
                   "--reference", str(reference), "--scheduler", cluster, "--fail-on-drift",
                   "--drift-threshold", "amount:psi=5", "--drift-metric", "distance_km:ks",
                   "--drift-threshold", "distance_km:ks=0.99")
    assert proc.returncode == 0, proc.stderr
    d = json.loads((tmp_path / "b" / "_manifest.json").read_text())["drift"]
    assert d["drifted_features"] == [] and d["features"]["distance_km"]["metric"] == "ks"


def test_an_earlier_manifest_is_a_reference(tmp_path: Path, drifted: Path, cluster: str) -> None:
    base = tmp_path / "monday"
    assert run_cli("score", "--model", str(SAMPLE_MODEL), "--input", str(SAMPLE_DATA), "--output", str(base),
                   "--scheduler", cluster).returncode == 0
    no_ref = json.loads((base / "_manifest.json").read_text())["drift"]
    assert no_ref["reference"] is None and no_ref["features"]["amount"]["psi"] is None
    assert no_ref["features"]["amount"]["count"] == 100_000 and no_ref["drift_share"] is None
    proc = run_cli("score", "--model", str(SAMPLE_MODEL), "--input", str(drifted), "--output",
                   str(tmp_path / "tuesday"), "--scheduler", cluster, "--reference", str(base / "_manifest.json"))
    assert proc.returncode == 0, proc.stderr
    d = json.loads((tmp_path / "tuesday" / "_manifest.json").read_text())["drift"]
    assert d["reference"]["kind"] == "manifest" and set(d["drifted_features"]) == SHIFTED


def test_bad_references_fail_before_scoring(tmp_path: Path, reference: Path, cluster: str) -> None:
    wrong_version = tmp_path / "v9.json"
    data = json.loads(reference.read_text())
    wrong_version.write_text(json.dumps({**data, "schema_version": 9}))
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({**data, "columns": {k: v for k, v in data["columns"].items() if k != "hour"}}))
    foreign = tmp_path / "foreign.json"
    foreign.write_text('{"schema": "something-else"}')
    cases = [
        (tmp_path / "missing.json", ["reference not found", "missing.json"]),
        (wrong_version, ["unsupported reference profile schema_version", "expected schema_version 1, found 9", "v9.json"]),
        (partial, ["no statistics for feature(s) hour", "partial.json"]),
        (foreign, ["reference must be a", "foreign.json"]),
    ]
    for ref, needles in cases:
        out = tmp_path / "out"
        proc = run_cli("score", "--model", str(SAMPLE_MODEL), "--input", str(SAMPLE_DATA), "--output", str(out),
                       "--reference", str(ref), "--scheduler", cluster)
        assert proc.returncode == 1, proc.stderr
        assert_one_error_line(proc, *needles)
        assert not out.exists() or not list(out.rglob("*.parquet"))
    proc = run_cli("score", "--model", str(SAMPLE_MODEL), "--input", str(SAMPLE_DATA), "--output",
                   str(tmp_path / "x"), "--fail-on-drift")
    assert proc.returncode == 2  # a usage error
    assert_one_error_line(proc, "--fail-on-drift needs --reference")


def test_report_text_and_self_contained_html(tmp_path: Path, drifted: Path, reference: Path, cluster: str) -> None:
    out = tmp_path / "out"
    assert run_cli("score", "--model", str(SAMPLE_MODEL), "--input", str(drifted), "--output", str(out),
                   "--reference", str(reference), "--scheduler", cluster).returncode == 0
    html_path = tmp_path / "report.html"
    proc = run_cli("report", str(out / "_manifest.json"), "--output", str(html_path))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "2 of 8 features drifted" in lines[1]
    ranked = [ln.split()[0] for ln in lines[4:] if ln.strip() and not ln.startswith("report:")]
    d = json.loads((out / "_manifest.json").read_text())["drift"]
    flagged = set(d["drifted_features"]) | set(d["drifted_predictions"])
    assert set(d["drifted_features"]) == SHIFTED
    assert set(ranked[: len(flagged)]) == flagged  # every drifted column comes before every other
    html = html_path.read_text()
    assert html.count("<svg") == 11 and "distance_km" in html and "drift: psi" in html
    for needle in ("http://", "https://", "<script", "<link"):
        assert needle not in html, f"report must be self-contained ({needle})"
    screenshot(html_path, tmp_path / "report.png")


def test_the_api_fails_on_drift_like_the_cli_after_committing(tmp_path: Path, drifted: Path, reference: Path,
                                                               cluster: str) -> None:
    import batchserve

    out = tmp_path / "out"
    with pytest.raises(batchserve.DriftError, match="drift detected in 2 of 8 features") as info:
        batchserve.score(model=str(SAMPLE_MODEL), input=str(drifted), output=str(out), reference=str(reference),
                         scheduler=cluster, fail_on_drift=True)
    assert info.value.exit_code == 3
    assert (out / "_SUCCESS").exists()  # the scored data stands; the caller decides what drift means
    assert set(info.value.result.manifest.drift.drifted_features) == SHIFTED
    result = batchserve.score(model=str(SAMPLE_MODEL), input=str(drifted), output=str(tmp_path / "ok"),
                              reference=str(reference), scheduler=cluster, fail_on_drift=True, max_drift_share=0.5)
    assert set(result.manifest.drift.drifted_features) == SHIFTED  # 2 of 8 is within the share
