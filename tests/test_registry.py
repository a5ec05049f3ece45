"""The model repository: register -> promote -> score -> rollback with real models and real oracles,
half-written versions, concurrent promotes from real processes, and bad input as one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from batchserve import registry
from batchserve.errors import ModelError
from tests.conftest import features_matrix, make_table, write_dataset
from tests.test_cli import BIN, assert_one_error_line

pytestmark = pytest.mark.slow


def cli(*args: str, opts: dict | None = None) -> subprocess.CompletedProcess[str]:
    extra = [a for k, v in (opts or {}).items() for a in ("--storage-option", f"{k}={v}")]
    return subprocess.run([str(BIN), *args, *extra], capture_output=True, text=True, timeout=180)


def _probabilities(out: str, rel: str, opts: dict | None) -> np.ndarray:
    if out.startswith("s3://"):
        import s3fs

        fs = s3fs.S3FileSystem(key=opts["key"], secret=opts["secret"], endpoint_url=opts["endpoint_url"])
        fs.invalidate_cache()
        with fs.open(f"{out}/{rel}", "rb") as fh:
            table = pq.read_table(fh)
    else:
        table = pq.read_table(Path(out) / rel)
    rows = table.column("probabilities").to_pylist()
    # a plain [N, 2] tensor (logreg) or a ZipMap struct keyed by class label (LightGBM)
    return np.array([[r["0"], r["1"]] if isinstance(r, dict) else r for r in rows], dtype=np.float64)


@pytest.mark.parametrize("where", ["local", pytest.param("s3", marks=pytest.mark.heavy)])
def test_register_promote_score_rollback_with_oracles(where: str, tmp_path: Path, model_dir: dict, cluster: str,
                                                      request: pytest.FixtureRequest) -> None:
    opts = request.getfixturevalue("s3") if where == "s3" else None
    repo = f"s3://lake/repo-{tmp_path.name}/fraud" if opts else str(tmp_path / "repo" / "fraud")
    out = f"s3://lake/scored-{tmp_path.name}" if opts else str(tmp_path / "scored")
    table = make_table(400, seed=21)
    write_dataset(tmp_path / "in", {"a.parquet": table})
    x = features_matrix(table)
    (logreg, logreg_clf), (lgbm, lgbm_clf) = model_dir["logreg"], model_dir["lgbm"]

    def score_and_check(clf, run: str) -> None:
        proc = cli("score", "--model", f"{repo}@production", "--input", str(tmp_path / "in"), "--output",
                   f"{out}/{run}", "--scheduler", cluster, opts=opts)
        assert proc.returncode == 0, proc.stderr
        want = clf.predict_proba(x)
        np.testing.assert_allclose(_probabilities(f"{out}/{run}", "a.parquet", opts), want, rtol=1e-4, atol=1e-5)

    assert cli("models", "register", repo, str(logreg), "--message", "logistic baseline", opts=opts).returncode == 0
    assert cli("models", "register", repo, str(lgbm), "--message", "gradient boosting", opts=opts).returncode == 0
    assert cli("models", "promote", repo, "1", "--alias", "production", "--message", "go live", opts=opts).returncode == 0
    score_and_check(logreg_clf, "r1")
    assert cli("models", "promote", repo, "2", "--alias", "production", "--message", "better AUC", opts=opts).returncode == 0
    score_and_check(lgbm_clf, "r2")
    assert cli("models", "rollback", repo, "--alias", "production", "--message", "scores too high", opts=opts).returncode == 0
    score_and_check(logreg_clf, "r3")
    hist = cli("models", "history", repo, "--json", opts=opts)
    assert hist.returncode == 0, hist.stderr
    steps = [json.loads(line) for line in hist.stdout.splitlines()]
    assert [(e["action"], e.get("alias"), e["from_version"], e["to_version"], e["message"]) for e in steps] == [
        ("rollback", "production", 2, 1, "scores too high"),
        ("promote", "production", 1, 2, "better AUC"),
        ("promote", "production", None, 1, "go live"),
        ("register", None, None, 2, "gradient boosting"),
        ("register", None, None, 1, "logistic baseline"),
    ]
    assert all(e["actor"] for e in steps) and [e["seq"] for e in steps] == [5, 4, 3, 2, 1]
    if opts is None:  # the manifest traces the scored file to who moved the alias, and why
        m = json.loads((Path(out) / "r3" / "_manifest.json").read_text())["model"]
        assert m["uri"].endswith("fraud@production") and m["version"] == "1"
        assert m["alias_event"]["action"] == "rollback" and m["alias_event"]["message"] == "scores too high"


def test_half_written_versions_are_skipped_by_plain_resolution_and_refused_by_number(
    tmp_path: Path, model_dir: dict, caplog: pytest.LogCaptureFixture
) -> None:
    repo = tmp_path / "fraud"
    registry.register(str(repo), Path(model_dir["logreg"][0]).read_bytes(), {}, actor="t", message=None)
    (repo / "2").mkdir()  # an upload cut off before model.onnx
    registry.register(str(repo), Path(model_dir["lgbm"][0]).read_bytes(), {}, actor="t", message=None)
    data = (repo / "3" / "model.onnx").read_bytes()
    (repo / "3" / "model.onnx").write_bytes(data[: len(data) // 2])  # truncated after registration
    with caplog.at_level("WARNING", logger="batchserve"):
        got = registry.resolve(str(repo), {})
    assert got.version == "1"
    assert "skipping model version 3" in caplog.text and "skipping model version 2" in caplog.text
    with pytest.raises(ModelError, match=r"model version 2, which is incomplete: no model\.onnx"):
        registry.resolve(f"{repo}@2", {})
    with pytest.raises(ModelError, match=r"model version 3, which is incomplete: model\.onnx does not match"):
        registry.resolve(f"{repo}@3", {})


def test_an_unregistered_repository_reads_as_before_and_skips_a_truncated_upload(tmp_path: Path,
                                                                                 model_dir: dict) -> None:
    repo = tmp_path / "legacy"
    for v, name in ((1, "logreg"), (2, "lgbm")):
        (repo / str(v)).mkdir(parents=True)
        (repo / str(v) / "model.onnx").write_bytes(Path(model_dir[name][0]).read_bytes())
    assert registry.resolve(str(repo), {}).version == "2"  # today's layout: highest wins
    (repo / "3").mkdir()
    (repo / "3" / "model.onnx").write_bytes(b"\x08\x07\x12")  # a truncated upload
    assert registry.resolve(str(repo), {}).version == "2"
    (repo / "10").mkdir()
    (repo / "10" / "model.onnx").write_bytes(Path(model_dir["logreg"][0]).read_bytes())
    (repo / "latest").mkdir()  # not a version: ignored
    assert registry.resolve(str(repo), {}).version == "10"  # as integers: 10 beats 2
    assert registry.resolve(str(repo), {}, version=1).version == "1"  # --model-version N


_PROMOTER = """
import sys
from batchserve import registry
root, opts, who = sys.argv[1], dict(a.split("=", 1) for a in sys.argv[3:]), sys.argv[2]
for i in range(8):
    registry.promote(root, 1 + i % 2, "production", opts, actor=who, message=f"{who} {i}")
"""


@pytest.mark.parametrize("where", ["local", pytest.param("s3", marks=pytest.mark.heavy)])
def test_concurrent_promotes_lose_no_event_and_the_alias_follows_the_last(
    where: str, tmp_path: Path, model_dir: dict, request: pytest.FixtureRequest
) -> None:
    opts = request.getfixturevalue("s3") if where == "s3" else {}
    repo = f"s3://lake/race-{tmp_path.name}/fraud" if opts else str(tmp_path / "fraud")
    for name in ("logreg", "lgbm"):
        registry.register(repo, Path(model_dir[name][0]).read_bytes(), opts, actor="setup", message=None)
    args = [f"{k}={v}" for k, v in opts.items()]
    procs = [subprocess.Popen([sys.executable, "-c", _PROMOTER, repo, who, *args]) for who in ("a", "b")]
    assert [p.wait(timeout=180) for p in procs] == [0, 0]
    trail = registry.events(repo, opts)
    assert [e.seq for e in trail] == list(range(1, 19))  # 2 registers + 16 promotes, no gap, no loss
    promotes = [e for e in trail if e.action == "promote"]
    assert sorted(e.message for e in promotes) == sorted(f"{w} {i}" for w in "ab" for i in range(8))
    for before, after in zip(promotes, promotes[1:], strict=False):  # each knew where the alias really was
        assert after.from_version == before.to_version
    assert registry.resolve(f"{repo}@production", opts).version == str(promotes[-1].to_version)


_PROMOTE_AND_READ = """
import sys
from batchserve import registry
root, who = sys.argv[1], sys.argv[2]
for i in range(20):
    registry.promote(root, 1 + i % 2, "production", {}, actor=who, message=f"{who} {i}")
    registry.resolve(root + "@production", {})  # a reader, between writers
    registry.events(root, {})
"""


def test_readers_never_see_a_half_written_event(tmp_path: Path, model_dir: dict) -> None:
    """Concurrent promotes and @alias lookups through the Python API in four real processes: no reader
    meets an event file created but not yet written ('unreadable audit event: Expecting value')."""
    repo = str(tmp_path / "fraud")
    for name in ("logreg", "lgbm"):
        registry.register(repo, Path(model_dir[name][0]).read_bytes(), {}, actor="setup", message=None)
    procs = [subprocess.Popen([sys.executable, "-c", _PROMOTE_AND_READ, repo, who], stderr=subprocess.PIPE, text=True)
             for who in "abcd"]
    errors = [p.communicate(timeout=180)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], errors
    assert [e.seq for e in registry.events(repo, {})] == list(range(1, 83))  # 2 registers + 80 promotes
    assert not [n for n in os.listdir(Path(repo) / "_events") if not n.endswith(".json")]  # no temporary left


def test_bad_input_is_one_line_and_changes_nothing(tmp_path: Path, model_dir: dict) -> None:
    repo = tmp_path / "fraud"
    registry.register(str(repo), Path(model_dir["logreg"][0]).read_bytes(), {}, actor="t", message=None)
    registry.promote(str(repo), 1, "production", {}, actor="t", message=None)
    before = sorted(p.name for p in (repo / "_events").iterdir())
    single = model_dir["logreg"][0]
    write_dataset(tmp_path / "in", {"a.parquet": make_table(5)})
    cases = [
        (["inspect", f"{repo}@staging"], ["unknown alias 'staging'", "aliases: production"]),
        (["inspect", f"{repo}@7"], ["model version 7, which does not exist", "complete versions: 1"]),
        (["inspect", f"{single}@production"], ["need a model repository folder, not a file"]),
        (["models", "promote", str(repo), "9", "--alias", "production"], ["cannot promote version 9", "does not exist"]),
        (["models", "rollback", str(repo), "--alias", "production"], ["cannot roll back 'production'",
                                                                     "earliest promotion still standing"]),
        (["models", "rollback", str(repo), "--alias", "canary"], ["cannot roll back 'canary'"]),
        (["models", "register", str(repo), str(tmp_path / "in" / "a.parquet")], ["not an ONNX model"]),
        (["score", "--model", f"{repo}@staging", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "o")],
         ["unknown alias 'staging'"]),
    ]
    for args, needles in cases:
        proc = cli(*args)
        assert proc.returncode == 1, (args, proc.stderr)
        assert_one_error_line(proc, *needles)
    assert sorted(p.name for p in (repo / "_events").iterdir()) == before
    assert sorted(p.name for p in repo.iterdir()) == ["1", "_events"] and not (tmp_path / "o").exists()


def test_resolution_reads_only_what_it_needs(tmp_path: Path, model_dir: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model retrained nightly for a month: resolving it must not read every version and event
    (on an object store each read is a request)."""
    from batchserve import io

    repo = str(tmp_path / "fraud")
    data = Path(model_dir["logreg"][0]).read_bytes()
    for _ in range(30):
        registry.register(repo, data, {}, actor="t", message=None)
    for v in range(1, 31):
        registry.promote(repo, v, "production", {}, actor="t", message=None)
    reads: list[str] = []
    real = io.read_text
    monkeypatch.setattr(io, "read_text", lambda url, storage: reads.append(url) or real(url, storage))
    assert registry.resolve(repo, {}).version == "30"
    assert len(reads) == 1, reads  # version 30's record
    reads.clear()
    assert registry.resolve(f"{repo}@production", {}).version == "30"
    assert len(reads) == 2, reads  # the newest event, and version 30's record


def test_rollback_steps_back_through_promotions_and_never_redoes(tmp_path: Path, model_dir: dict) -> None:
    """The 3 a.m. double rollback: the second one goes further back (or refuses), never to the version
    the first rolled back from; --to picks an earlier promotion; --dry-run changes nothing."""
    repo = str(tmp_path / "fraud")
    data = Path(model_dir["logreg"][0]).read_bytes()
    for _ in range(3):
        registry.register(repo, data, {}, actor="t", message=None)
    for v in (1, 2, 3):
        registry.promote(repo, v, "production", {}, actor="t", message=None)
    dry = cli("models", "rollback", repo, "--alias", "production", "--dry-run")
    assert dry.returncode == 0 and dry.stdout == "dry run, nothing changed: production would roll back 3 -> 2\n"
    assert registry.resolve(f"{repo}@production", {}).version == "3"
    first = cli("models", "rollback", repo, "--alias", "production")
    second = cli("models", "rollback", repo, "--alias", "production")
    assert "rolled back 3 -> 2" in first.stdout and "rolled back 2 -> 1" in second.stdout
    third = cli("models", "rollback", repo, "--alias", "production")
    assert third.returncode == 1 and "earliest promotion still standing" in third.stderr
    assert registry.resolve(f"{repo}@production", {}).version == "1"
    registry.promote(repo, 3, "production", {}, actor="t", message=None)
    registry.promote(repo, 2, "production", {}, actor="t", message=None)
    assert registry.alias_stack(registry.events(repo, {}), "production") == [1, 3, 2]
    wrong = cli("models", "rollback", repo, "--alias", "production", "--to", "2")
    assert wrong.returncode == 1 and "not an earlier promotion of this alias (earlier: 3, 1)" in wrong.stderr
    assert cli("models", "rollback", repo, "--alias", "production", "--to", "1").returncode == 0
    assert registry.resolve(f"{repo}@production", {}).version == "1"
    history = cli("models", "history", repo).stdout.splitlines()
    assert history[0].split(": ", 1)[1].startswith("rolled back 2 -> 1")


@pytest.mark.parametrize("where", ["local", pytest.param("s3", marks=pytest.mark.heavy)])
def test_two_rollbacks_at_once_move_the_alias_one_step(where: str, tmp_path: Path, model_dir: dict,
                                                       request: pytest.FixtureRequest) -> None:
    """Real concurrent processes from the same state, on a local folder and on S3 (moto's server): at
    most one step back is taken per state seen, and the alias never returns to the version both meant
    to leave."""
    opts = request.getfixturevalue("s3") if where == "s3" else {}
    repo = f"s3://lake/rollback-{tmp_path.name}/fraud" if opts else str(tmp_path / "fraud")
    data = Path(model_dir["logreg"][0]).read_bytes()
    for _ in range(3):
        registry.register(repo, data, opts, actor="t", message=None)
    for v in (1, 2, 3):
        registry.promote(repo, v, "production", opts, actor="t", message=None)
    extra = [a for k, v in opts.items() for a in ("--storage-option", f"{k}={v}")]
    procs = [subprocess.Popen([str(BIN), "models", "rollback", repo, "--alias", "production", *extra],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=120), p.stdout.read(), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
    for p in procs:
        p.stdout.close(), p.stderr.close()  # type: ignore[union-attr]
    moves = [e for e in registry.events(repo, opts) if e.action == "rollback"]
    assert [(e.from_version, e.to_version) for e in moves] in ([(3, 2)], [(3, 2), (2, 1)])
    assert registry.resolve(f"{repo}@production", opts).version in ("2", "1")
    for code, out, err in results:
        assert code == 0 or (code == 1 and err.count("\n") == 1 and "moved meanwhile" in err), (code, out, err)


@pytest.mark.parametrize("edit", ["delete", "nested"])
def test_an_event_the_registry_cannot_interpret_stops_resolution_with_one_line(tmp_path: Path, model_dir: dict,
                                                                              edit: str) -> None:
    """Issue 20, item 7: a hand-edited action made history raise KeyError while score @production
    silently used another version; a deeply nested event raised RecursionError."""
    repo = tmp_path / "fraud"
    data = Path(model_dir["logreg"][0]).read_bytes()
    for _ in range(2):
        registry.register(str(repo), data, {}, actor="t", message=None)
    for v in (1, 2):
        registry.promote(str(repo), v, "production", {}, actor="t", message=None)
    event = repo / "_events" / "00000004.json"
    if edit == "delete":
        event.write_text(json.dumps({**json.loads(event.read_text()), "action": "delete"}))
        needle = "audit event has an action batchserve cannot interpret ('delete'"
    else:
        event.write_text("[" * 100_000 + "]" * 100_000)
        needle = "unreadable audit event: JSON nested too deeply"
    write_dataset(tmp_path / "in", {"a.parquet": make_table(5)})
    for args in (["models", "history", str(repo)],
                 ["score", "-m", f"{repo}@production", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "o")],
                 ["models", "promote", str(repo), "1", "--alias", "production"]):
        proc = cli(*args)
        assert proc.returncode == 1, (args, proc.stderr)
        assert_one_error_line(proc, needle, "00000004.json")
    assert not (tmp_path / "o").exists()


@pytest.mark.heavy  # 300 barrier-released trials: a concurrency proof, beside the other races in test-heavy
def test_rollbacks_released_together_from_one_state_move_the_alias_exactly_one_step(
        tmp_path: Path, model_dir: dict) -> None:
    """Issue 26, item 5: two ``registry.rollback`` calls released at the same instant both succeeded in 4 of
    20 trials (3 -> 2 -> 1): the compare-and-set read the state it compared against after listing the
    versions, late enough to see the other's move. Each caller here reads the alias's state, waits at a
    barrier with the other, and rolls back from that state: in every one of 300 trials exactly one
    succeeds and the alias stands one step back, whatever the scheduler does between the two."""
    import shutil
    import threading

    template = tmp_path / "template"
    data = Path(model_dir["logreg"][0]).read_bytes()
    for _ in range(3):
        registry.register(str(template), data, {}, actor="t", message=None)
    for v in (1, 2, 3):
        registry.promote(str(template), v, "production", {}, actor="t", message=None)
    outcomes: dict[str, int] = {}
    for trial in range(300):
        repo = str(tmp_path / f"r{trial}")
        shutil.copytree(template, repo)
        barrier = threading.Barrier(2)
        results: list[object] = [None, None]

        def one(i: int, repo: str = repo, barrier: threading.Barrier = barrier,
                results: list[object] = results) -> None:
            seen = registry.alias_target(f"{repo}@production", {})
            barrier.wait()
            try:
                results[i] = registry.rollback(repo, "production", {}, actor=f"t{i}", message=None, expect=seen)
            except ModelError as exc:
                results[i] = exc

        threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        won = [r for r in results if isinstance(r, registry.Event)]
        lost = [r for r in results if isinstance(r, ModelError)]
        assert len(won) == 1 and len(lost) == 1, (trial, results)
        assert "moved meanwhile" in str(lost[0]) and "\n" not in str(lost[0])
        moves = [(e.from_version, e.to_version) for e in registry.events(repo, {}) if e.action == "rollback"]
        assert moves == [(3, 2)], (trial, moves)
        assert registry.resolve(f"{repo}@production", {}).version == "2"
        outcomes[won[0].actor] = outcomes.get(won[0].actor, 0) + 1
        shutil.rmtree(repo)
    assert sum(outcomes.values()) == 300


@pytest.mark.heavy  # six CLI runs
def test_a_version_changed_after_registering_is_never_promoted_or_shown_complete(
        tmp_path: Path, model_dir: dict) -> None:
    """Issue 26, item 4: ``model.onnx`` changed in place (same size) was promoted, and ``models show`` called
    it complete; serve then refused it on sha256 and ``score @champion`` failed. Promote, rollback, show, list
    and validate all check the recorded sha256."""
    repo = tmp_path / "fraud"
    data = Path(model_dir["logreg"][0]).read_bytes()
    for _ in range(2):
        registry.register(str(repo), data, {}, actor="t", message=None)
    registry.promote(str(repo), 1, "champion", {}, actor="t", message=None)
    registry.promote(str(repo), 2, "champion", {}, actor="t", message=None)
    changed = bytearray(data)
    changed[-1] ^= 0xFF  # same size, other bytes
    (repo / "1" / "model.onnx").write_bytes(bytes(changed))
    assert (repo / "1" / "model.onnx").stat().st_size == len(data)
    trail = len(registry.events(str(repo), {}))
    proc = cli("models", "promote", str(repo), "1", "--alias", "candidate")
    assert proc.returncode == 1
    assert_one_error_line(proc, "cannot promote version 1", "changed after registering")
    proc = cli("models", "rollback", str(repo), "--alias", "champion")
    assert proc.returncode == 1
    assert_one_error_line(proc, "cannot roll back 'champion' to version 1", "changed after registering")
    assert len(registry.events(str(repo), {})) == trail
    shown = json.loads(cli("models", "show", str(repo), "--json").stdout)
    assert [(r["version"], r["complete"]) for r in shown] == [(1, False), (2, True)]
    assert "changed after registering" in shown[0]["problem"]
    assert "versions: 2 " in cli("models", "list", str(tmp_path)).stdout
    write_dataset(tmp_path / "in", {"a.parquet": make_table(5)})
    proc = cli("validate", "-m", f"{repo}@1", "-i", str(tmp_path / "in"))
    assert proc.returncode == 1
    assert_one_error_line(proc, "does not match the sha256 it was registered with")
