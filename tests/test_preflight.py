"""The CLI's pre-import check (batchserve/preflight.py) says exactly what planning says for a missing
local model or input, and stays silent where it cannot be sure, leaving those to planning."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchserve.config import resolve_score_config
from batchserve.errors import BatchserveError
from batchserve.pipeline.plan import absolute_paths, plan_run
from batchserve.preflight import check_local_paths

REPO = Path(__file__).resolve().parent.parent
MODEL, DATA = str(REPO / "sample_data" / "model"), str(REPO / "sample_data" / "transactions")


def _planning_error(cfg: object) -> str:
    with pytest.raises(BatchserveError) as err:
        plan_run(absolute_paths(cfg))  # type: ignore[arg-type]
    return str(err.value)


@pytest.mark.parametrize(("model", "data"), [
    ("nope", DATA), ("nope/", DATA), ("{tmp}/gone.onnx", DATA),  # the model: relative, folder, file
    (MODEL, "nope"), (MODEL, "{tmp}/gone/"), (MODEL, "{tmp}/gone/part.parquet"),  # the input
])
def test_the_same_line_as_planning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model: str, data: str) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = resolve_score_config({"model": model.format(tmp=tmp_path), "input": data.format(tmp=tmp_path),
                                "output": str(tmp_path / "out")}, env={})
    with pytest.raises(BatchserveError) as early:
        check_local_paths(cfg)
    assert str(early.value) == _planning_error(cfg)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("model", "data", "extra"), [
    ("nope@production", DATA, {}),  # a repository alias: planning explains tags
    ("nope", DATA, {"model_version": 2}),
    ("memory://nope.onnx", DATA, {}),  # not a local path
    (MODEL, "{tmp}/gone/*.parquet", {}),  # a glob
    (MODEL, "{tmp}/link.parquet", {}),  # a broken link: planning says so
    (MODEL, DATA, {}),  # nothing wrong
])
def test_silent_where_it_cannot_be_sure(tmp_path: Path, model: str, data: str, extra: dict) -> None:
    (tmp_path / "link.parquet").symlink_to(tmp_path / "missing")
    cfg = resolve_score_config({"model": model, "input": data.format(tmp=tmp_path), "output": str(tmp_path / "o"),
                                **extra}, env={})
    check_local_paths(cfg)


def _full_output(root: Path) -> None:
    """Two files that count, and the lock and a staging leftover, which do not."""
    (root / "sub").mkdir(parents=True)
    (root / "a.parquet").write_bytes(b"x")
    (root / "sub" / "b.txt").write_text("x")
    (root / "_batchserve.lock").write_text("{}")
    (root / "_temporary" / "run").mkdir(parents=True)
    (root / "_temporary" / "run" / "part.parquet").write_bytes(b"x")


@pytest.mark.parametrize("output", ["out", "out/", "{tmp}/out"])
def test_a_full_output_is_refused_with_the_runs_own_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         output: str) -> None:
    """Without --overwrite or --resume a run refuses an output with files in it (after planning, which
    costs the scoring stack); the pre-flight says the same line, counting the same files."""
    from batchserve.pipeline import dry_run

    monkeypatch.chdir(tmp_path)
    _full_output(tmp_path / "out")
    cfg = resolve_score_config({"model": MODEL, "input": DATA, "output": output.format(tmp=tmp_path)}, env={})
    with pytest.raises(BatchserveError) as early:
        check_local_paths(cfg)
    with pytest.raises(BatchserveError) as run:
        dry_run(absolute_paths(cfg))
    assert str(early.value) == str(run.value)
    assert "(2 files)" in str(early.value)


@pytest.mark.parametrize("extra", [{"overwrite": True}, {"resume": True}])
def test_a_full_output_is_left_to_the_run_under_overwrite_or_resume(tmp_path: Path, extra: dict) -> None:
    _full_output(tmp_path / "out")
    check_local_paths(resolve_score_config({"model": MODEL, "input": DATA, "output": str(tmp_path / "out"),
                                            **extra}, env={}))


def test_an_output_holding_only_the_lock_and_staging_is_empty(tmp_path: Path) -> None:
    _full_output(tmp_path / "out")
    (tmp_path / "out" / "a.parquet").unlink()
    (tmp_path / "out" / "sub" / "b.txt").unlink()
    check_local_paths(resolve_score_config({"model": MODEL, "input": DATA, "output": str(tmp_path / "out")}, env={}))
