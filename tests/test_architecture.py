"""The house plan, pinned: the public API, and which module may import which runtime."""

from __future__ import annotations

import ast
from pathlib import Path

import batchserve

PKG = Path(batchserve.__file__).parent


def test_public_api_is_pinned() -> None:
    assert sorted(batchserve.__all__) == sorted([
        "__version__", "score", "validate", "profile", "inspect_model", "resolve_score_config", "ScoreConfig",
        "RunResult", "RunPlan", "ProgressEvent", "Manifest", "BatchserveError", "ConfigError", "InputError",
        "SchemaError", "DataError", "ModelError", "DeviceError", "OutputError", "StorageError", "ClusterError",
        "WorkerStateError", "Interrupted", "LockedError", "DriftError", "UsageError", "dry_run", "DryRun", "runs",
        "files", "diff", "serve", "create_app", "RequestError",
    ])
    import importlib.metadata

    assert batchserve.__version__ == importlib.metadata.version("batchserve")
    for name in set(batchserve.__all__) - {"__version__"}:
        obj = getattr(batchserve, name)  # resolved lazily: a wrong module mapping raises here
        assert obj.__module__.startswith("batchserve."), (name, obj.__module__)
        assert obj.__name__ == {"diff": "diff_runs"}.get(name, name)
    for name in ("score", "validate", "profile", "inspect_model"):
        assert getattr(batchserve, name).__module__.startswith("batchserve.pipeline")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_only_io_imports_pyarrow_parquet_and_fsspec() -> None:
    for path in PKG.rglob("*.py"):
        if path.stem == "io" or "io" in path.relative_to(PKG).parts[:-1]:
            continue
        bad = {m for m in _imports(path) if m.startswith(("pyarrow.parquet", "fsspec", "s3fs"))}
        assert not bad, f"{path.name} imports {bad}; storage access belongs in io.py"


def test_only_model_imports_onnxruntime() -> None:
    """model, and binding (a GPU session's IO binding, which model owns)."""
    for path in PKG.rglob("*.py"):
        if path.stem not in ("model", "binding"):
            assert not {m for m in _imports(path) if m.startswith("onnxruntime")}, path.name


def test_the_pure_core_imports_without_onnxruntime() -> None:
    """scoring, drift, reference and report load without onnxruntime, Dask or fsspec."""
    import subprocess
    import sys

    code = ("import sys, batchserve.scoring, batchserve.drift, batchserve.reference, batchserve.report; "
            "print(sorted(m for m in ('onnxruntime', 'distributed', 'fsspec') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def _imported_by(*args: str) -> set[str]:
    """Top-level packages a real CLI invocation imports (python -X importtime, parsed)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "batchserve", *args], capture_output=True,
                          text=True, timeout=120)
    return {ln.split("|")[-1].strip().split(".")[0] for ln in proc.stderr.splitlines() if ln.startswith("import time:")}


HEAVY = {"distributed", "dask", "onnxruntime", "onnx", "pyarrow", "fsspec", "polars", "numpy", "prometheus_client"}


def test_help_and_errors_before_scoring_import_nothing_heavy(tmp_path: Path) -> None:
    """Startup is import time: --help, settings errors and a missing model or input load none of the
    heavy stack, and errors found while planning load no Dask."""
    assert not _imported_by("--help") & HEAVY
    assert not _imported_by("score", "--help") & HEAVY
    assert not _imported_by("score", "-m", "m", "-i", "i", "-o", str(tmp_path / "o"), "--batch-size", "0") & HEAVY
    # a missing local model or input is found with os.path before the scoring stack loads
    assert not _imported_by("score", "-m", str(tmp_path / "nope"), "-i", str(tmp_path), "-o", str(tmp_path / "o")) & HEAVY
    # so is a local output that already holds files, without --overwrite or --resume
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "part.parquet").write_bytes(b"x")
    assert not _imported_by("score", "-m", str(PKG.parent / "sample_data" / "model"), "-i", str(tmp_path), "-o",
                            str(tmp_path / "full")) & HEAVY
    # one planning must read (here: an input folder with no Parquet files) loads storage, but no Dask
    empty = _imported_by("score", "-m", str(PKG.parent / "sample_data" / "model"), "-i", str(tmp_path), "-o",
                         str(tmp_path / "o"))
    assert "fsspec" in empty and not empty & {"distributed", "dask", "polars"}


def test_a_schema_error_loads_no_onnxruntime_pydantic_or_rich(tmp_path: Path) -> None:
    """The commonest error before scoring, a feature column missing from the input, needs the model's
    signature (onnx) and the footers (pyarrow), and nothing else that costs: onnxruntime is loaded after
    the schemas are checked, pydantic stays out (typer < 0.29) and rich only draws for a terminal."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"amount": [1.0, 2.0]}), tmp_path / "in" / "x.parquet")
    loaded = _imported_by("score", "-m", str(PKG.parent / "sample_data" / "model"), "-i", str(tmp_path / "in"),
                          "-o", str(tmp_path / "o"))
    assert {"onnx", "pyarrow"} <= loaded
    assert not loaded & {"onnxruntime", "pydantic", "rich", "distributed", "polars"}


def test_a_small_local_run_imports_neither_dask_nor_pandas(tmp_path: Path) -> None:
    """The sample data on this machine's own engine: in-process threads on a CPU machine of under 8
    cores load no Dask (~0.3 s), and nothing on the scoring path lets pyarrow import pandas (~0.15 s)."""
    from batchserve.config import resolve_score_config
    from batchserve.pipeline.cluster import engine_for

    repo = PKG.parent
    loaded = _imported_by("score", "-m", str(repo / "sample_data" / "model"), "-i",
                          str(repo / "sample_data" / "transactions"), "-o", str(tmp_path / "o"), "-q")
    assert (tmp_path / "o" / "_SUCCESS").exists()
    assert {"onnxruntime", "pyarrow"} <= loaded and "pandas" not in loaded
    if engine_for(resolve_score_config({"model": "m", "input": "i", "output": "o"}, env={}), 100_000) == \
            "local-threads":
        assert not loaded & {"distributed", "dask"}
