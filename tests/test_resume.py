"""pipeline/resume.py: every decision --resume makes, and the reason it records."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest

from batchserve import manifest
from batchserve.config import resolve_score_config
from batchserve.pipeline.plan import fingerprint, plan_run
from batchserve.pipeline.resume import resume_decisions
from tests.conftest import FEATURES, make_table, write_dataset


@pytest.fixture
def setup(tmp_path: Path, model_dir: dict):
    write_dataset(tmp_path / "in", {"a.parquet": make_table(10), "b.parquet": make_table(12, seed=1)})
    out = tmp_path / "out"
    out.mkdir()
    cfg = resolve_score_config({"model": str(model_dir["logreg"][0]), "input": str(tmp_path / "in"),
                                "output": str(out), "features": FEATURES, "resume": True}, env={})
    plan = plan_run(cfg)
    outputs = []
    for p in plan.partitions:
        (out / p.relpath).write_bytes(b"x" * 7)
        outputs.append(manifest.FileEntry(str(out / p.relpath), p.relpath, 1, 7, status="scored"))
    prev = manifest.example_manifest()
    prev.run.id, prev.run.status = "earlier", "interrupted"
    prev.model.sha256 = plan.info.sha256
    prev.fingerprint = fingerprint(cfg, plan)
    prev.inputs = [manifest.FileEntry(p.url, p.relpath, 1, p.size, version=p.version) for p in plan.partitions]
    prev.outputs = outputs
    return cfg, plan, prev, out


def _decide(cfg, plan, earlier):
    kept = resume_decisions(cfg, plan, earlier)
    return kept.reused, kept.notes


def test_everything_unchanged_is_reused(setup) -> None:
    cfg, plan, prev, _ = setup
    reused, notes = _decide(cfg, plan, [prev])
    assert [e.relpath for e in reused] == ["a.parquet", "b.parquet"] and notes == {}
    assert {e.status for e in reused} == {"reused"} and reused[0].note == "committed by run earlier"


def test_no_earlier_manifest(setup) -> None:
    cfg, plan, _, _ = setup
    reused, notes = _decide(cfg, plan, [])
    assert reused == () and set(notes.values()) == {"no earlier manifest to resume from"}


def test_model_changed_rescores_all(setup) -> None:
    cfg, plan, prev, _ = setup
    prev.model.sha256 = "f" * 64
    reused, notes = _decide(cfg, plan, [prev])
    assert reused == () and all(n.startswith("model changed (sha256 ffffffffffff ->") for n in notes.values())


def test_settings_changed_rescores_all(setup) -> None:
    cfg, plan, prev, _ = setup
    reused, notes = _decide(dataclasses.replace(cfg, prefix="pred_"), plan, [prev])
    assert reused == () and set(notes.values()) == {"features, --keep or --prefix changed"}


def test_a_file_the_earlier_run_did_not_commit(setup) -> None:
    cfg, plan, prev, _ = setup
    prev.outputs = prev.outputs[:1]
    reused, notes = _decide(cfg, plan, [prev])
    assert [e.relpath for e in reused] == ["a.parquet"]
    assert notes == {"b.parquet": "not committed by run earlier (interrupted)"}


def test_an_input_that_changed(setup) -> None:
    cfg, plan, prev, _ = setup
    prev.inputs[1] = dataclasses.replace(prev.inputs[1], bytes=prev.inputs[1].bytes + 1)
    reused, notes = _decide(cfg, plan, [prev])
    assert notes == {"b.parquet": "input changed (size or modification time)"} and len(reused) == 1


def test_an_output_missing_or_changed_since(setup) -> None:
    cfg, plan, prev, out = setup
    (out / "a.parquet").unlink()
    (out / "b.parquet").write_bytes(b"longer than before")
    reused, notes = _decide(cfg, plan, [prev])
    assert reused == () and set(notes.values()) == {"committed output is missing or changed"}


def test_each_file_is_judged_against_the_newest_run_that_lists_it(setup) -> None:
    """A later run of another partition wrote the latest manifest: a.parquet is still found in the
    earlier run's record, and b.parquet in the newer one's."""
    cfg, plan, prev, _ = setup
    newer = copy.deepcopy(prev)
    newer.run.id = "newer"
    newer.outputs = [e for e in prev.outputs if e.relpath == "b.parquet"]
    older = copy.deepcopy(prev)
    older.outputs = [e for e in prev.outputs if e.relpath == "a.parquet"]
    kept = resume_decisions(cfg, plan, [newer, older])
    assert {e.relpath: e.note for e in kept.reused} == {"a.parquet": "committed by run earlier",
                                                        "b.parquet": "committed by run newer"}
    assert kept.sources == {"a.parquet": "earlier", "b.parquet": "newer"}


@pytest.mark.slow
def test_files_committed_after_the_last_journal_write_are_kept_by_their_footer(tmp_path: Path, cluster: str) -> None:
    """Issue 20, item 13: SIGKILLed within ~2 s of its first journal write, a run's 'running' manifest
    listed 0 files while 5 to 55 were committed, so --resume rescored everything and a chain of kills
    never progressed. Here the output is left exactly so (files committed, a journal listing none, no
    record): --resume keeps every file by the record in its own footer, checksum computed anew."""
    import hashlib
    import json

    import batchserve
    from batchserve import manifest as manifest_mod
    from tests.conftest import SAMPLE_DATA, SAMPLE_MODEL

    out = tmp_path / "out"
    first = batchserve.score(model=str(SAMPLE_MODEL), input=str(SAMPLE_DATA), output=str(out), scheduler=cluster)
    killed = first.manifest
    killed.run.status, killed.outputs = "running", []  # the journal as the SIGKILL left it
    (out / "_manifest.json").write_text(manifest_mod.dumps(killed))
    for p in (out / "_runs").iterdir():
        p.unlink()
    (out / "_SUCCESS").unlink()
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")}
    assert batchserve.dry_run(model=str(SAMPLE_MODEL), input=str(SAMPLE_DATA), output=str(out), resume=True).reusable == 10
    again = batchserve.score(model=str(SAMPLE_MODEL), input=str(SAMPLE_DATA), output=str(out), scheduler=cluster,
                             resume=True)
    assert {e.status for e in again.manifest.outputs} == {"reused"} and len(again.manifest.outputs) == 10
    assert all(e.note.endswith("(found by its footer stamp)") for e in again.manifest.outputs)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")} == before  # nothing rescored
    for e in again.manifest.outputs:
        assert e.checksum == "sha256:" + hashlib.sha256((out / e.relpath).read_bytes()).hexdigest()
        assert e.rows == 10_000
    assert json.loads((out / "_manifest.json").read_text())["run"]["status"] == "succeeded"
