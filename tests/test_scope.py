"""A run owns only what it selected (issue 19, parts 1 and 4): ``--filter`` scopes what a run may
count, replace or remove in its output, a hive key fixed by the output's path is not nested again,
and every run's manifest is kept in the output's ledger (``_runs/``), listed and diffable."""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path

import polars as pl
import pyarrow.dataset as ds
import pytest

import batchserve
from batchserve import history
from batchserve.errors import BatchserveError, OutputError
from tests.conftest import SAMPLE_DATA, SAMPLE_MODEL, write_dataset

BIN = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "batchserve"
DAY1, DAY2 = "date=2026-11-01", "date=2026-11-02"


def _bytes_under(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_filtered_resume_keeps_the_other_partition_byte_for_byte(tmp_path: Path, cluster: str) -> None:
    """The night-shift data loss: day 2 --resume into an output holding day 1 removed day 1's outputs."""
    out = tmp_path / "scored"
    common = {"model": str(SAMPLE_MODEL), "input": str(SAMPLE_DATA), "output": str(out), "scheduler": cluster}
    batchserve.score(**common, filter=[DAY1])
    before = _bytes_under(out / DAY1)
    assert len(before) == 2
    second = batchserve.score(**common, filter=[DAY2], resume=True)
    assert _bytes_under(out / DAY1) == before
    assert sorted(p.name for p in (out / DAY2).iterdir()) == ["part-0.parquet", "part-1.parquet"]
    m = second.manifest
    assert m.scope == {"filters": [DAY2], "fixed_keys": {}} and m.removed == []
    assert {e.relpath.split("/")[0] for e in m.outputs} == {DAY2}
    # --overwrite of day 2 leaves day 1 alone too, and never touches the ledger
    batchserve.score(**common, filter=[DAY2], overwrite=True)
    assert _bytes_under(out / DAY1) == before
    assert len(list((out / "_runs").glob("*.stats.json"))) == 3
    # the whole output reads as one dataset, and every partition's latest run is listed as current
    assert pl.read_parquet(out / "**/*.parquet", hive_partitioning=True).height == 40_000
    rows = history.run_rows(*_load(out))
    assert [(r.scope, r.current) for r in rows] == [((DAY1,), True), ((DAY2,), False), ((DAY2,), True)]


def _load(out: Path) -> tuple[list, list[str]]:
    urls = history.find_manifests([str(out)], {})
    return history.load_runs(urls, {}), urls


def test_a_filtered_run_appends_without_flags_but_refuses_its_own_scope(tmp_path: Path, cluster: str) -> None:
    out = tmp_path / "scored"
    common = {"model": str(SAMPLE_MODEL), "input": str(SAMPLE_DATA), "output": str(out), "scheduler": cluster}
    batchserve.score(**common, filter=[DAY1])
    batchserve.score(**common, filter=[DAY2])  # another day: neither flag needed
    with pytest.raises(OutputError, match=r"holds 2 file\(s\) in this run's scope \(date=2026-11-02\)") as info:
        batchserve.score(**common, filter=[DAY2])
    # the CLI's cheap pre-flight check says the same line, and counts only the scope
    proc = subprocess.run([str(BIN), "score", "-m", str(SAMPLE_MODEL), "-i", str(SAMPLE_DATA), "-o", str(out),
                           "--filter", DAY2, "-q"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith(f"error: {info.value} (run ")
    proc = subprocess.run([str(BIN), "score", "-m", str(SAMPLE_MODEL), "-i", str(SAMPLE_DATA), "-o", str(out),
                           "--filter", "date=2026-11-03", "--dry-run"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "other partitions are left as they are" in proc.stdout


def test_a_stale_output_inside_the_scope_is_named_before_and_when_removed(
    tmp_path: Path, cluster: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An input deleted since the last run: its output inside the scope goes, named at WARNING, in the
    manifest and by --dry-run first; the same stale kind of file outside the scope stays."""
    model = str(SAMPLE_MODEL)
    src = write_dataset(tmp_path / "in", {f"{DAY1}/a.parquet": _sample(0), f"{DAY1}/b.parquet": _sample(1),
                                          f"{DAY2}/a.parquet": _sample(2), f"{DAY2}/b.parquet": _sample(3)})
    out = tmp_path / "out"
    batchserve.score(model=model, input=str(src), output=str(out), scheduler=cluster)
    (src / DAY1 / "b.parquet").unlink()
    (src / DAY2 / "b.parquet").unlink()
    plan = batchserve.dry_run(model=model, input=str(src), output=str(out), filter=[DAY1], resume=True)
    assert plan.removes == (f"{DAY1}/b.parquet",)
    assert (out / DAY1 / "b.parquet").exists()  # the dry run removed nothing
    with caplog.at_level(logging.WARNING, logger="batchserve"):
        result = batchserve.score(model=model, input=str(src), output=str(out), filter=[DAY1], resume=True,
                                  scheduler=cluster)
    assert result.manifest.removed == [f"{DAY1}/b.parquet"]
    assert any(r.levelno == logging.WARNING and f"removed {DAY1}/b.parquet" in r.getMessage() for r in caplog.records)
    assert not (out / DAY1 / "b.parquet").exists() and (out / DAY2 / "b.parquet").exists()


def _sample(seed: int):
    """Rows with the sample model's columns, from the sample data itself (its schema, other rows)."""
    table = ds.dataset(SAMPLE_DATA / DAY1, format="parquet").to_table()
    return table.slice(seed * 500, 500)


def test_a_key_the_output_path_fixes_is_not_nested_again(tmp_path: Path, cluster: str) -> None:
    out = tmp_path / "scored"
    result = batchserve.score(model=str(SAMPLE_MODEL), input=str(SAMPLE_DATA), output=str(out / DAY2),
                              filter=[DAY2], scheduler=cluster)
    assert sorted(p.name for p in (out / DAY2).glob("*.parquet")) == ["part-0.parquet", "part-1.parquet"]
    assert not (out / DAY2 / DAY2).exists()
    assert result.manifest.scope == {"filters": [DAY2], "fixed_keys": {"date": "2026-11-02"}}
    frame = pl.read_parquet(out / "**/*.parquet", hive_partitioning=True)
    assert frame.height == 20_000 and frame["date"].cast(pl.String).unique().to_list() == ["2026-11-02"]
    assert ds.dataset(out, format="parquet", partitioning="hive").count_rows() == 20_000
    # an input whose folder gives that key another value cannot go there
    with pytest.raises(BatchserveError, match="has date=2026-11-01, but the output's path fixes date=2026-11-02"):
        batchserve.score(model=str(SAMPLE_MODEL), input=str(SAMPLE_DATA), output=str(tmp_path / "x" / DAY2),
                         scheduler=cluster)


def test_every_run_is_kept_listed_and_diffable_by_id(tmp_path: Path, cluster: str) -> None:
    out = tmp_path / "out"
    common = {"model": str(SAMPLE_MODEL), "input": str(SAMPLE_DATA), "output": str(out), "scheduler": cluster,
              "filter": [DAY1]}
    first = batchserve.score(**common)
    second = batchserve.score(**common, overwrite=True)
    runs = sorted(p.name for p in (out / "_runs").glob("*.json") if not p.name.endswith(".stats.json"))
    assert runs == sorted([f"{first.manifest.run.id}.json", f"{second.manifest.run.id}.json"])
    assert json.loads((out / "_manifest.json").read_text())["run"]["id"] == second.manifest.run.id
    listed = subprocess.run([str(BIN), "runs", str(out)], capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0 and len(listed.stdout.splitlines()) == 2
    assert first.manifest.run.id in listed.stdout and second.manifest.run.id in listed.stdout
    diff = subprocess.run([str(BIN), "diff", "--in", str(out), first.manifest.run.id, second.manifest.run.id[:20]],
                          capture_output=True, text=True, timeout=120)
    assert diff.returncode == 0 and "config   overwrite: False -> True" in diff.stdout
    same = subprocess.run([str(BIN), "diff", "--in", str(out), first.manifest.run.id, first.manifest.run.id],
                          capture_output=True, text=True, timeout=120)
    assert same.returncode == 0 and len(same.stdout.splitlines()) == 2  # the two headers, no change
    unknown = subprocess.run([str(BIN), "diff", "--in", str(out), "1999", first.manifest.run.id],
                             capture_output=True, text=True, timeout=120)
    assert unknown.returncode == 1 and unknown.stderr.count("\n") == 1 and "no run with id '1999'" in unknown.stderr


@pytest.mark.heavy  # three runs on the cluster; the live-lock case below stays in make test
def test_overwrite_never_empties_another_output_nested_inside(tmp_path: Path, cluster: str) -> None:
    """Issue 26, item 1: ``score -o X/sub`` finished, then ``score -o X --overwrite`` removed every file of
    X/sub ("its input is gone", false) and exited 0, leaving X/sub/_SUCCESS over a manifest of missing files.
    The outer run is refused, naming the nested output, before anything is touched; a filter that leaves the
    nested output out of the run's scope still runs and leaves it alone."""
    outer = tmp_path / "scored"
    inner = outer / DAY1
    common = {"model": str(SAMPLE_MODEL), "input": str(SAMPLE_DATA), "scheduler": cluster}
    batchserve.score(**common, output=str(inner), filter=[DAY1])
    before = _bytes_under(inner)
    assert "_SUCCESS" in before and sum(k.endswith(".parquet") for k in before) == 2
    with pytest.raises(OutputError, match=f"another batchserve output, {DAY1}/") as info:
        batchserve.score(**common, output=str(outer), overwrite=True)
    assert "\n" not in str(info.value)
    assert _bytes_under(inner) == before
    assert not (outer / "_SUCCESS").exists()
    with pytest.raises(OutputError, match=f"another batchserve output, {DAY1}/"):
        batchserve.score(**common, output=str(outer), resume=True)
    assert _bytes_under(inner) == before
    # day 2 only: the nested day-1 output lies outside this run's scope
    done = batchserve.score(**common, output=str(outer), filter=[DAY2], overwrite=True)
    assert {e.relpath.split("/")[0] for e in done.manifest.outputs} == {DAY2}
    assert _bytes_under(inner) == before


def test_a_live_lock_below_the_output_is_respected(tmp_path: Path) -> None:
    """Issue 26, item 1: with the inner run still going, both runs exited 0. A live run's lock anywhere below
    the output refuses the outer run, as a live lock above it already did."""
    import os
    import socket

    from batchserve.errors import LockedError

    outer = tmp_path / "scored"
    (outer / "sub").mkdir(parents=True)
    (outer / "sub" / "_batchserve.lock").write_text(json.dumps(
        {"run_id": "r-inner", "host": socket.gethostname(), "pid": os.getpid(), "user": "t",
         "started_at": "20261207T000000Z"}))
    with pytest.raises(LockedError, match=r"writing sub/ inside this output \(run r-inner"):
        batchserve.score(model=str(SAMPLE_MODEL), input=str(SAMPLE_DATA), output=str(outer), overwrite=True,
                         workers=1)
    assert sorted(p.name for p in outer.rglob("*")) == ["_batchserve.lock", "sub"]
