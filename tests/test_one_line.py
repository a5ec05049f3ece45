"""Every bad input is one clear line (exit 1) and leaves the output as it was; even a bug is
one line that says so. Each case ran the real console script and printed a traceback, or a
misleading line, before issue 7."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import make_table, write_dataset
from tests.test_cli import BIN, assert_one_error_line, run_cli
from tests.test_safety import assert_scored, data_files, linear_model, score

#: Every test here runs the real console script or real processes.
pytestmark = pytest.mark.slow


def model_file(tmp_path: Path, name: str, **kw: object) -> Path:
    data, _ = linear_model(**kw)  # type: ignore[arg-type]
    path = tmp_path / name
    path.write_bytes(data)
    return path


# --- tracebacks that are now one line ------------------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path: Path):
    """A 1 MiB tmpfs: a real ENOSPC, not a mock (needs root and mount, as on CI's machines)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.decode().strip()[:80]}): disk-full not exercised")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_is_one_line_and_leaves_no_probe(tmp_path: Path, tiny_disk: Path, cluster: str) -> None:
    model = model_file(tmp_path, "m.onnx")
    write_dataset(tmp_path / "in", {f"p{i}.parquet": make_table(40_000, seed=i) for i in range(4)})
    out = tiny_disk / "out"
    proc = score(model, tmp_path / "in", out, cluster)
    assert proc.returncode == 1
    assert_one_error_line(proc, "No space left on device")
    assert not (out / "_SUCCESS").exists()
    assert not list(out.rglob(".write-probe"))
    m = json.loads((out / "_manifest.json").read_text()) if (out / "_manifest.json").exists() else None
    if m is not None:  # whatever did commit is whole and listed
        assert m["run"]["status"] == "failed" and data_files(out) == {e["relpath"] for e in m["outputs"]}


def test_full_disk_before_anything_is_written_leaves_no_probe(tmp_path: Path, tiny_disk: Path, cluster: str) -> None:
    (tiny_disk / "filler").write_bytes(b"\0" * (1024 * 1024 - 4096 * 2))
    write_dataset(tmp_path / "in", {"a.parquet": make_table(10)})
    proc = score(model_file(tmp_path, "m.onnx"), tmp_path / "in", tiny_disk / "out", cluster)
    assert proc.returncode == 1
    assert_one_error_line(proc)
    assert not list(tiny_disk.rglob(".write-probe"))


@pytest.mark.parametrize("case", ["static-batch", "scalar-output", "too-new-ir", "too-new-opset",
                                  "nested-feature-names"])
def test_models_that_cannot_run_fail_in_validate_and_score_before_a_manifest(
    tmp_path: Path, cluster: str, case: str
) -> None:
    kw, needles = {
        "static-batch": ({"batch": 1}, ["fixed batch dimension of 1", "dynamic first axis"]),
        "scalar-output": ({"scalar": True}, ["output 'score' is a scalar"]),
        "too-new-ir": ({"ir": 99}, ["Unsupported model IR version: 99"]),
        "too-new-opset": ({"opset": 99}, ["Opset 99"]),
        "nested-feature-names": ({"meta": {"feature_names": "[" * 100_000 + "]" * 100_000}},
                                 ["feature_names", "JSON list of strings"]),
    }[case]
    model = model_file(tmp_path, "model.onnx", **kw)
    write_dataset(tmp_path / "in", {"a.parquet": make_table(10)})
    val = run_cli("validate", "--model", str(model), "--input", str(tmp_path / "in"))
    assert val.returncode == 1
    line = assert_one_error_line(val, *needles, "model.onnx")
    assert "onnxruntime::" not in line and ".cc:" not in line  # no C++ signature
    out = tmp_path / "out"
    proc = score(model, tmp_path / "in", out, cluster)
    assert proc.returncode == 1
    assert_one_error_line(proc, *needles, "model.onnx")
    assert not out.exists()  # no manifest: a plain re-run is not refused as "not empty"
    if case == "nested-feature-names":
        ins = run_cli("inspect", str(model), "--json")
        assert ins.returncode == 0, ins.stderr  # inspect still shows the model, and what is wrong with it
        shown = json.loads(ins.stdout)
        assert shown["feature_names"] is None and "JSON list of strings" in shown["feature_names_error"]


def test_inspect_shows_metadata_that_looks_like_markup(tmp_path: Path) -> None:
    model = model_file(tmp_path, "m.onnx", meta={"note": "trained on [/x] and [bold]data[/bold]"})
    proc = run_cli("inspect", str(model))
    assert proc.returncode == 0, proc.stderr
    assert "[/x]" in proc.stdout and "[bold]data[/bold]" in proc.stdout


@pytest.mark.parametrize("args,needle", [
    (["--storage-option", "nokey"], "--storage-option takes key=value"),
    (["--batch-size", "100000000000000000000"], "--batch-size must be between 1 and"),
    (["--scheduler", "notaurl"], "--scheduler must be a Dask scheduler address"),
    (["--workers", "99999999"], "--workers must be at most"),
    (["--max-failed-files", "-1", "--on-error", "skip"], "--max-failed-files must be >= 0"),
    (["--device", "tpu"], "--device must be auto, cpu, cuda or cuda:N"),
    (["--on-error", "ignore"], "--on-error must be fail or skip"),
    (["--filter", "date=>2026"], "--filter 'date=>2026'"),
])
def test_bad_option_values_are_one_line_and_write_nothing(tmp_path: Path, args: list[str], needle: str) -> None:
    """Every bad option value is a usage error, exit 2: a retry cannot fix it."""
    write_dataset(tmp_path / "in", {"a.parquet": make_table(5)})
    proc = run_cli("score", "--model", str(model_file(tmp_path, "m.onnx")), "--input", str(tmp_path / "in"),
                   "--output", str(tmp_path / "out"), *args)
    assert proc.returncode == 2
    assert_one_error_line(proc, needle)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["folder", "not-utf8"])
def test_bad_job_files(tmp_path: Path, kind: str) -> None:
    job = tmp_path / "job"
    if kind == "folder":
        job.mkdir()
    else:
        job.write_bytes(b"\xff\xfe[score]\nmodel = \x80\n")
    proc = run_cli("score", "--job", str(job))
    assert proc.returncode == 2
    assert_one_error_line(proc, "job file is a folder" if kind == "folder" else "not UTF-8", str(job))


def _manifest_with_run_as_string(tmp_path: Path) -> Path:
    from batchserve import manifest

    data = manifest.example_manifest().to_dict()
    data["run"] = "yesterday"
    path = tmp_path / "bad" / "_manifest.json"
    path.parent.mkdir()
    path.write_text(json.dumps(data))
    return path


def test_report_on_the_wrong_files(tmp_path: Path) -> None:
    pq.write_table(make_table(3), tmp_path / "x.parquet")
    proc = run_cli("report", str(tmp_path / "x.parquet"))
    assert proc.returncode == 1
    assert_one_error_line(proc, "expected a UTF-8 JSON file, found a Parquet file", "x.parquet")
    proc = run_cli("report", str(_manifest_with_run_as_string(tmp_path)))
    assert proc.returncode == 1
    assert_one_error_line(proc, "manifest is malformed at run", "_manifest.json")


def test_resume_over_a_malformed_manifest_is_one_line(tmp_path: Path, cluster: str) -> None:
    bad = _manifest_with_run_as_string(tmp_path)
    write_dataset(tmp_path / "in", {"a.parquet": make_table(5)})
    before = bad.read_bytes()
    proc = score(model_file(tmp_path, "m.onnx"), tmp_path / "in", bad.parent, cluster, "--resume")
    assert proc.returncode == 1
    assert_one_error_line(proc, "manifest is malformed at run")
    assert bad.read_bytes() == before and sorted(p.name for p in bad.parent.iterdir()) == ["_manifest.json"]


@pytest.mark.parametrize("breakage", ["rows-as-text", "summary-as-list", "count-negative"])
def test_reference_profile_with_wrong_types(tmp_path: Path, cluster: str, breakage: str) -> None:
    from batchserve import drift
    from batchserve import reference as ref_mod

    summary = drift.summarize_numeric(make_table(50).column("f0").to_numpy(zero_copy_only=False)).to_dict()
    prof = ref_mod.Profile("t", "0", {"input": "x", "files": 1, "rows": 50}, None, ["f0"], [],
                            {"f0": {"role": "feature", "summary": summary}}).to_dict()
    if breakage == "rows-as-text":
        prof["source"]["rows"] = "fifty"
    elif breakage == "summary-as-list":
        prof["columns"]["f0"]["summary"] = [1, 2]
    else:
        prof["columns"]["f0"]["summary"]["count"] = -3
    ref = tmp_path / "ref.json"
    ref.write_text(json.dumps(prof))
    write_dataset(tmp_path / "in", {"a.parquet": make_table(5)})
    proc = score(model_file(tmp_path, "m.onnx"), tmp_path / "in", tmp_path / "out", cluster, "--reference", str(ref))
    assert proc.returncode == 1
    assert_one_error_line(proc, "reference profile is malformed at", "ref.json")
    assert not (tmp_path / "out").exists()


def _catches_sigterm(pid: int) -> bool:
    """Whether the process has installed a SIGTERM handler yet (Linux: /proc/<pid>/status SigCgt)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = next((ln.split()[1] for ln in status.splitlines() if ln.startswith("SigCgt:")), "0")
    return bool(int(caught, 16) & (1 << (signal.SIGTERM - 1)))


def test_sigterm_while_starting_still_says_its_line(tmp_path: Path) -> None:
    proc = subprocess.Popen([str(BIN), "score", "--model", "m", "--input", "i", "--output", str(tmp_path / "o")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not _catches_sigterm(proc.pid) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)  # the launcher installs its handler first, then imports the heavy stack
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 1:  # this machine imported everything before the signal: the run already failed
        pytest.skip("startup was faster than the signal")
    assert proc.returncode == 143, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: interrupted by SIGTERM"), err


def test_an_unexpected_exception_is_one_line_naming_the_run_and_debug(tmp_path: Path) -> None:
    """Fault injection: the real main() with the pipeline replaced by one that hits a bug."""
    write_dataset(tmp_path / "in", {"a.parquet": make_table(5)})
    (tmp_path / "m.onnx").write_bytes(b"never read: the pipeline is replaced")
    code = (
        "import sys\n"
        "import batchserve.cli as cli\n"
        "def boom(*a, **k):\n"
        "    raise ZeroDivisionError('division by zero')\n"
        "cli.pipeline.score = boom\n"
        f"sys.argv = ['batchserve', 'score', '--model', {str(tmp_path / 'm.onnx')!r}, '--input', {str(tmp_path / 'in')!r}, "
        f"'--output', {str(tmp_path / 'out')!r}] + sys.argv[1:]\n"
        "from batchserve.launch import main\n"
        "main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    line = assert_one_error_line(proc, "internal error (a bug in batchserve)", "ZeroDivisionError", "--debug")
    assert " run 20" in line  # the run id (UTC timestamp first)
    dbg = subprocess.run([sys.executable, "-c", code, "--debug"], capture_output=True, text=True, timeout=120)
    assert dbg.returncode == 1 and "Traceback" in dbg.stderr


# --- messages that were unclear or wrong ----------------------------------------------------------


def test_paths_with_brackets_are_paths_and_globs_still_glob(tmp_path: Path, cluster: str) -> None:
    model = model_file(tmp_path, "m.onnx")
    data = tmp_path / "data"
    write_dataset(data / "run 1", {"x.parquet": make_table(7, seed=9)})
    real = write_dataset(data / "run [1]", {"x.parquet": make_table(11, seed=1)})
    cases = [
        (real, 11),  # an existing folder named with brackets is that folder
        (real / "x.parquet", 11),  # an existing file too
        (data / "run [1]" / "*.parquet", 7),  # no such path: a glob, whose [1] matches "run 1"
    ]
    for i, (inp, rows) in enumerate(cases):
        out = tmp_path / "outs" / f"out{i}"
        proc = score(model, inp, out, cluster)
        assert proc.returncode == 0, proc.stderr
        assert json.loads((out / "_manifest.json").read_text())["totals"]["rows"] == rows, inp


def test_explicit_underscore_file_is_read(tmp_path: Path, cluster: str) -> None:
    write_dataset(tmp_path / "in", {"_x.parquet": make_table(12)})
    proc = score(model_file(tmp_path, "m.onnx"), tmp_path / "in" / "_x.parquet", tmp_path / "out", cluster)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "out" / "_manifest.json").read_text())["totals"]["rows"] == 12


def test_duplicate_column_names_are_named(tmp_path: Path, cluster: str) -> None:
    t = make_table(5)
    dup = pa.Table.from_arrays([*t.columns, t.column("f1")], names=[*t.column_names, "f1"])
    (tmp_path / "in").mkdir()
    pq.write_table(dup, tmp_path / "in" / "d.parquet")
    proc = score(model_file(tmp_path, "m.onnx"), tmp_path / "in", tmp_path / "out", cluster)
    assert proc.returncode == 1
    assert_one_error_line(proc, "appears more than once", "'f1'", "d.parquet")


def test_running_manifest_as_reference_says_so(tmp_path: Path, cluster: str) -> None:
    from batchserve import manifest

    m = manifest.example_manifest()
    m.run.status = "running"
    ref = tmp_path / "_manifest.json"
    ref.write_text(manifest.dumps(m))
    write_dataset(tmp_path / "in", {"a.parquet": make_table(5)})
    proc = score(model_file(tmp_path, "m.onnx"), tmp_path / "in", tmp_path / "out", cluster, "--reference", str(ref))
    assert proc.returncode == 1
    assert_one_error_line(proc, "did not succeed (status running)")


def test_missing_s3_bucket_is_refused_not_created(tmp_path: Path, s3: dict, cluster: str) -> None:
    import boto3

    write_dataset(tmp_path / "in", {"a.parquet": make_table(5)})
    opts = [a for k, v in s3.items() for a in ("--storage-option", f"{k}={v}")]
    proc = score(model_file(tmp_path, "m.onnx"), tmp_path / "in", "s3://no-such-bucket/out/", cluster, *opts)
    assert proc.returncode == 1
    assert_one_error_line(proc, "bucket 'no-such-bucket' does not exist")
    names = [b["Name"] for b in boto3.client("s3", endpoint_url=s3["endpoint_url"]).list_buckets()["Buckets"]]
    assert "no-such-bucket" not in names


def test_profile_into_a_folder_leaves_nothing_behind(tmp_path: Path, cluster: str) -> None:
    write_dataset(tmp_path / "in", {"a.parquet": make_table(5)})
    (tmp_path / "existing").mkdir()
    proc = subprocess.run([str(BIN), "profile", "--input", str(tmp_path / "in"), "--output", "existing",
                           "--scheduler", cluster], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 1
    assert_one_error_line(proc, "profile output is a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing", "in"]


def test_max_failed_files_exceeded_leaves_no_staging(tmp_path: Path, cluster: str) -> None:
    write_dataset(tmp_path / "in", {"a.parquet": make_table(5)})
    (tmp_path / "in" / "b.parquet").write_bytes(b"PAR1 not really")
    out = tmp_path / "out"
    proc = score(model_file(tmp_path, "m.onnx"), tmp_path / "in", out, cluster, "--on-error", "skip",
                 "--max-failed-files", "0")
    assert proc.returncode == 1
    assert not (out / "_temporary").exists()


def test_scalar_output_error_names_the_model(tmp_path: Path) -> None:
    model = model_file(tmp_path, "scalar.onnx", scalar=True)
    write_dataset(tmp_path / "in", {"a.parquet": make_table(5)})
    proc = run_cli("validate", "--model", str(model), "--input", str(tmp_path / "in"))
    assert proc.returncode == 1
    assert_one_error_line(proc, "scalar", "scalar.onnx")


def test_oracle_still_holds_for_a_good_model(tmp_path: Path, cluster: str) -> None:
    """The checks above must not refuse a good model: scored values equal numpy in float64."""
    data, w = linear_model(seed=5)
    model = tmp_path / "ok.onnx"
    model.write_bytes(data)
    t = make_table(500, seed=5)
    write_dataset(tmp_path / "in", {"a.parquet": t})
    proc = score(model, tmp_path / "in", tmp_path / "out", cluster)
    assert proc.returncode == 0, proc.stderr
    assert_scored(tmp_path / "out", "a.parquet", t, w)



@pytest.mark.slow
def test_no_resource_tracker_noise_after_a_sigkill(tmp_path: Path) -> None:
    """A SIGKILLed run on its own local cluster used to leave two lines of multiprocessing warnings."""
    from tests.conftest import SAMPLE_DATA, SAMPLE_MODEL

    out = tmp_path / "out"
    proc = subprocess.Popen(
        [str(BIN), "score", "--model", str(SAMPLE_MODEL), "--input", str(SAMPLE_DATA), "--output", str(out),
         "--workers", "2", "--batch-size", "50"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 120
    while not (out / "_manifest.json").exists():  # the cluster is up and files are committing
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.kill()
    _, err = proc.communicate(timeout=60)  # returns once every child holding stderr has gone too
    assert "resource_tracker" not in err and "leaked" not in err, err


def test_a_missing_column_says_which_one_was_meant(tmp_path: Path) -> None:
    """Column names get "did you mean" like settings and filter keys do."""
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    from tests.conftest import SAMPLE_DATA, SAMPLE_MODEL

    table = ds.dataset(SAMPLE_DATA / "date=2026-11-01", format="parquet").to_table().slice(0, 50)
    (tmp_path / "in").mkdir()
    pq.write_table(table.rename_columns(["amt" if n == "amount" else n for n in table.column_names]),
                   tmp_path / "in" / "a.parquet")
    proc = run_cli("validate", "-m", str(SAMPLE_MODEL), "-i", str(tmp_path / "in"))
    assert proc.returncode == 1
    assert_one_error_line(proc, "feature column is missing (did you mean 'amt'?)", "'amount'", "a.parquet")
    keep = run_cli("validate", "-m", str(SAMPLE_MODEL), "-i", str(SAMPLE_DATA), "--keep", "card_ids")
    assert keep.returncode == 1
    assert_one_error_line(keep, "column named in --keep is missing (did you mean 'card_id'?)")


def test_a_file_name_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    """Issue 20, item 7: bad\\xff.parquet raised UnicodeEncodeError in score, validate and --dry-run."""
    import os
    import shutil

    from tests.conftest import SAMPLE_DATA, SAMPLE_MODEL

    (tmp_path / "in").mkdir()
    shutil.copy(SAMPLE_DATA / "date=2026-11-01" / "part-0.parquet", os.fsencode(tmp_path / "in") + b"/bad\xff.parquet")
    for args in (["score", "-o", str(tmp_path / "out")], ["validate"], ["score", "-o", str(tmp_path / "out"), "--dry-run"]):
        proc = run_cli(args[0], "-m", str(SAMPLE_MODEL), "-i", str(tmp_path / "in"), *args[1:])
        assert proc.returncode == 1, (args, proc.stderr)
        assert_one_error_line(proc, "input file name bad\\xff.parquet is not valid UTF-8; rename it")
    assert not (tmp_path / "out").exists()
