"""`make bench`: batchserve end to end against peers measured in the same run, in one table.

Per model (LogisticRegression, 200-tree LightGBM, MLP 32-512-512-1), on the same files:
  raw ORT      onnxruntime alone on features already in memory, best of three batch sizes (the ceiling);
  pyarrow r+w  reading and writing the same files with no model (the I/O floor);
  plain        a hand-written pyarrow + onnxruntime script (read, score in batches, write);
  pandas       the same loop with pandas;
  dask.df      dask.dataframe map_partitions, one session per worker process;
  batchserve   `batchserve score` end to end.
Every end-to-end figure is whole-process wall time of its own process (imports and cluster start
included), rows/s and the peak RSS of its whole process tree, best of --repeat interleaved runs.
Then: many small files (2,000 x 500 rows against the same rows in one file and a pandas loop),
startup (the sample data against the plain script; --help; an error before scoring), and polars
against pyarrow for reading, to_numpy and writing our files. Nothing here asserts a speed.

    python tests/bench.py --rows 2000000 [--files 2] [--models logreg,lgbm,mlp] [--repeat 1]
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests import models  # noqa: E402

N_FEATURES = 32
BATCH = 65_536


class PeakRSS:
    """Samples the RSS of a process and all its children (Dask workers) every 50 ms."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                root = psutil.Process(self.pid)
                procs = [root, *root.children(recursive=True)]
                total = 0
                for p in procs:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
                self.peak = max(self.peak, total)
            except psutil.Error:
                pass
            time.sleep(0.05)

    def __enter__(self) -> PeakRSS:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


def make_data(root: Path, rows: int, files: int, seed: int = 0) -> list[Path]:
    if root.exists():
        shutil.rmtree(root)
    rng = np.random.default_rng(seed)
    per = rows // files
    paths = []
    w = rng.normal(size=N_FEATURES)
    for i in range(files):
        n = per if i < files - 1 else rows - per * (files - 1)
        x = rng.normal(size=(n, N_FEATURES)).astype(np.float32)
        ids = np.arange(i * per, i * per + n, dtype=np.int64)
        cols = {"id": pa.array(ids)}
        cols.update({f"x{j}": x[:, j] for j in range(N_FEATURES)})
        # five more pass-through columns of the kinds scored tables carry: time, text, money, a flag
        cols["ts"] = pa.array(ids * 1_000_000 + 1_700_000_000_000_000, pa.timestamp("us"))
        cols["merchant"] = pa.array(np.char.add("m-", (ids % 997).astype(str)))
        cols["country"] = pa.array(np.array(["de", "fr", "us", "gb", "nl"])[ids % 5]).dictionary_encode()
        cols["amount"] = pa.array(np.round(rng.exponential(40.0, size=n), 2))
        cols["y"] = (x @ w + rng.normal(size=n) > 0).astype(np.int8)
        path = root / f"part={i:03d}" / "data.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(cols), path, row_group_size=BATCH)
        paths.append(path)
    return paths


def build_models(root: Path, files: list[Path]) -> dict[str, Path]:
    sample = pq.read_table(files[0]).slice(0, 50_000)
    names = [f"x{j}" for j in range(N_FEATURES)]
    x = np.column_stack([sample.column(n).to_numpy() for n in names])
    y = sample.column("y").to_numpy()
    out = {}
    root.mkdir(parents=True, exist_ok=True)
    data, _ = models.logreg(x, y, zipmap=False, names=names)
    out["logreg"] = root / "logreg.onnx"
    out["logreg"].write_bytes(data)
    data, _ = models.lightgbm(x, y, n_estimators=200, names=names)
    out["lgbm"] = root / "lgbm.onnx"
    out["lgbm"].write_bytes(data)
    data, _ = models.mlp(N_FEATURES, (512, 512))
    out["mlp"] = root / "mlp.onnx"
    out["mlp"].write_bytes(models.set_feature_names(data, names))
    return out


def load_features(files: list[Path]) -> np.ndarray:
    names = [f"x{j}" for j in range(N_FEATURES)]
    parts = []
    for f in files:
        t = pq.read_table(f, columns=names)
        parts.append(np.column_stack([t.column(n).to_numpy() for n in names]))
    return np.ascontiguousarray(np.concatenate(parts))


def timed(cmd: list[str], cwd: Path | None = None) -> tuple[float, int, str]:
    """Wall seconds, peak RSS of the process tree, and stderr of one command."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd)
    with PeakRSS(proc.pid) as mem:
        _, stderr = proc.communicate()
    secs = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} failed ({proc.returncode}): {stderr.strip()[-800:]}")
    return secs, mem.peak, stderr


def run_peer(kind: str, model: Path, data: Path, out: Path) -> tuple[float, int]:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    secs, peak, _ = timed([sys.executable, str(REPO / "tests" / "bench_peers.py"), kind, str(model), str(data),
                           str(out), str(BATCH)])
    return secs, peak


def run_batchserve(model: Path, data: Path, out: Path, extra: list[str]) -> tuple[float, int, dict]:
    """The CLI end to end: plan, cluster start, scoring, commit, manifest."""
    if out.exists():
        shutil.rmtree(out)
    exe = Path(sys.executable).parent / "batchserve"
    secs, peak, _ = timed([str(exe), "score", "--model", str(model), "--input", str(data), "--output", str(out),
                           "--quiet", *extra])
    return secs, peak, json.loads((out / "_manifest.json").read_text())


def best(results: list[tuple[float, int]]) -> tuple[float, int]:
    """The fastest of the repeats, with its peak memory."""
    return min(results, key=lambda r: r[0])


def raw_ort_best(model_path: Path, x: np.ndarray, threads: int) -> tuple[float, int]:
    """(rows/s, batch) of session.run over in-memory features, best of three batch sizes."""
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    sess.run(None, {name: x[:16]})
    found = []
    for batch in (8_192, 65_536, 262_144):
        t0 = time.perf_counter()
        for s in range(0, len(x), batch):
            sess.run(None, {name: x[s : s + batch]})
        found.append((len(x) / (time.perf_counter() - t0), batch))
    return max(found)


def model_table(args: argparse.Namespace, work: Path, files: list[Path], paths: dict[str, Path]) -> list[dict]:
    rows = args.rows
    threads = len(os.sched_getaffinity(0))
    copy = best([run_peer("copy", paths["mlp"], work / "data", work / "peer_copy") for _ in range(args.repeat)])
    x = load_features(files)
    print()
    print("| model | raw ORT (best batch) | pyarrow r+w | plain script | pandas loop | dask.df | batchserve "
          "| batchserve / best peer | batchserve / pyarrow r+w | peak RSS batchserve | peak RSS best peer |")
    print("|" + "---|" * 11)
    out = []
    for name in args.models.split(","):
        raw, raw_batch = raw_ort_best(paths[name], x, threads)
        runs: dict[str, list[tuple[float, int]]] = {"plain": [], "pandas": [], "dask": [], "batchserve": []}
        manifest: dict = {}
        for _ in range(args.repeat):  # interleaved, so machine noise hits everyone alike
            for kind in ("plain", "pandas", "dask"):
                if kind in args.skip:
                    continue
                runs[kind].append(run_peer(kind, paths[name], work / "data", work / f"peer_{kind}"))
            secs, peak, manifest = run_batchserve(paths[name], work / "data", work / f"out_{name}", args.extra.split())
            runs["batchserve"].append((secs, peak))
        rps = {k: rows / best(v)[0] for k, v in runs.items() if v}
        mem = {k: best(v)[1] for k, v in runs.items() if v}
        peers = {k: v for k, v in rps.items() if k != "batchserve"}
        top = max(peers, key=lambda k: peers[k]) if peers else None
        bs = rps["batchserve"]
        cells = [f"{raw:,.0f} (batch {raw_batch:,})", f"{rows / copy[0]:,.0f}"] + [
            f"{rps[k]:,.0f}" if k in rps else "-" for k in ("plain", "pandas", "dask")]
        print(f"| {name} | " + " | ".join(cells) + f" | {bs:,.0f} | {bs / peers[top]:.2f} ({top}) | "
              f"{bs / (rows / copy[0]):.2f} | {mem['batchserve'] / 2**20:,.0f} MiB | "
              f"{mem[top] / 2**20:,.0f} MiB |" if top else f"| {name} | {bs:,.0f} |", flush=True)
        out.append({"model": name, "rows_per_second": rps, "peak_rss_bytes": mem, "raw_ort": [raw, raw_batch],
                    "pyarrow_copy_rows_per_second": rows / copy[0], "engine": manifest["run"]["engine"]["kind"],
                    "split_s": [manifest["totals"][k] for k in ("read_seconds", "infer_seconds", "write_seconds")]})
    return out


def small_files(args: argparse.Namespace, work: Path, model: Path) -> dict:
    """2,000 files x 500 rows against the same 1M rows in one file, and a pandas loop over the small files."""
    n_files, per = args.small_files, 500
    small = make_data(work / "small", n_files * per, n_files, seed=1)
    one = make_data(work / "one", n_files * per, 1, seed=1)
    res: dict[str, list[tuple[float, int]]] = {"small": [], "one": [], "pandas_small": []}
    for _ in range(args.repeat):
        res["small"].append(run_batchserve(model, work / "small", work / "out_small", [])[:2])
        res["one"].append(run_batchserve(model, work / "one", work / "out_one", [])[:2])
        if "pandas" not in args.skip:
            res["pandas_small"].append(run_peer("pandas", model, work / "small", work / "peer_small"))
    rows = n_files * per
    rps = {k: rows / best(v)[0] for k, v in res.items() if v}
    print()
    print(f"| small files ({n_files:,} x {per} rows, mlp) | rows/s | ratio |")
    print("|---|---|---|")
    print(f"| batchserve, {n_files:,} small files | {rps['small']:,.0f} | 1.00 |")
    print(f"| batchserve, the same rows in one file | {rps['one']:,.0f} | small/one {rps['small'] / rps['one']:.2f} |")
    if "pandas_small" in rps:
        print(f"| pandas loop over the small files | {rps['pandas_small']:,.0f} | small/pandas "
              f"{rps['small'] / rps['pandas_small']:.2f} |")
    print(f"# per-file overhead of batchserve on small files: "
          f"{1000 * (rows / rps['small'] - rows / rps['one']) / n_files:.1f} ms", flush=True)
    del small, one
    return {"rows_per_second": rps}


def startup(args: argparse.Namespace, work: Path) -> dict:
    """The 100k-row sample data end to end, against the plain script; --help; errors before scoring."""
    exe = Path(sys.executable).parent / "batchserve"
    sample_model = REPO / "sample_data" / "model" / "1" / "model.onnx"
    sample_in = REPO / "sample_data" / "transactions"
    (work / "bad_schema").mkdir(exist_ok=True)  # the sample model's features are not there
    pq.write_table(pa.table({"amount": [1.0, 2.0]}), work / "bad_schema" / "part.parquet")
    (work / "not_onnx.onnx").write_bytes(b"not a model")
    # An installed batchserve has its bytecode (pip compiles it); an editable checkout under
    # PYTHONDONTWRITEBYTECODE recompiles every edited module on each command (~0.02 s): measure the former.
    compileall.compile_dir(str(REPO / "batchserve"), quiet=1)
    errors = {  # each found before scoring; the output one runs after the sample run filled out_sample
        "model not found": ["-m", str(work / "missing"), "-i", str(sample_in), "-o", str(work / "x")],
        "output folder not empty (no --overwrite)": ["-m", str(REPO / "sample_data" / "model"), "-i",
                                                     str(sample_in), "-o", str(work / "out_sample")],
        "not an ONNX model": ["-m", str(work / "not_onnx.onnx"), "-i", str(sample_in), "-o", str(work / "x")],
        "feature column missing from the input": ["-m", str(REPO / "sample_data" / "model"), "-i",
                                                  str(work / "bad_schema"), "-o", str(work / "x")],
    }
    res: dict[str, list[float]] = {"batchserve": [], "plain": [], "help": [], **{k: [] for k in errors}}
    for _ in range(max(3, args.repeat)):
        res["batchserve"].append(run_batchserve(REPO / "sample_data" / "model", sample_in, work / "out_sample", [])[0])
        res["plain"].append(run_sample_plain(sample_model, work / "plain_sample"))
        t0 = time.perf_counter()  # no RSS sampling thread here: on 2 cores it slows a 0.2 s command
        subprocess.run([str(exe), "--help"], capture_output=True, check=True)
        res["help"].append(time.perf_counter() - t0)
        for name, argv in errors.items():
            t0 = time.perf_counter()
            proc = subprocess.run([str(exe), "score", *argv], capture_output=True, text=True)
            res[name].append(time.perf_counter() - t0)
            if proc.returncode == 0 or not proc.stderr.startswith("error:"):
                raise SystemExit(f"expected an error line for {name}, got rc {proc.returncode}: {proc.stderr[-300:]}")
    med = {k: sorted(v)[len(v) // 2] for k, v in res.items()}
    med["error"] = max(med[k] for k in errors)
    print()
    print(f"| startup (median of {max(3, args.repeat)}) | seconds | ratio |")
    print("|---|---|---|")
    print(f"| batchserve, sample data (100k rows, 10 files) | {med['batchserve']:.2f} | "
          f"{med['batchserve'] / med['plain']:.2f} x plain |")
    print(f"| plain pyarrow + onnxruntime script, same files | {med['plain']:.2f} | 1.00 |")
    print(f"| batchserve --help | {med['help']:.2f} | |")
    for name in errors:
        print(f"| batchserve score, error before scoring: {name} | {med[name]:.2f} | |")
    print(f"# slowest error before scoring: {med['error']:.2f} s", flush=True)
    return med


def run_sample_plain(model: Path, out: Path) -> float:
    """The sample's plain script: its 8 features by name, the label and probabilities out."""
    if out.exists():
        shutil.rmtree(out)
    script = (
        "import sys, numpy as np, pyarrow as pa, pyarrow.parquet as pq, onnxruntime as ort, json, pathlib\n"
        "m, src, dst = sys.argv[1:4]\n"
        "s = ort.InferenceSession(m, providers=['CPUExecutionProvider'])\n"
        "meta = s.get_modelmeta().custom_metadata_map\n"
        "names = json.loads(meta['feature_names'])\n"
        "for f in sorted(pathlib.Path(src).rglob('*.parquet')):\n"
        "    t = pq.read_table(f)\n"
        "    x = np.column_stack([t.column(c).cast(pa.float32()).to_numpy() for c in names])\n"
        "    label, proba = s.run(None, {s.get_inputs()[0].name: x})[:2]\n"
        "    pr = np.asarray([list(d.values()) for d in proba] if isinstance(proba, list) else proba)\n"
        "    t = t.append_column('label', pa.array(label)).append_column('p1', pa.array(pr.reshape(len(x), -1)[:, -1]))\n"
        "    o = pathlib.Path(dst) / f.relative_to(src); o.parent.mkdir(parents=True, exist_ok=True)\n"
        "    pq.write_table(t, o)\n"
    )
    return timed([sys.executable, "-c", script, str(model), str(REPO / "sample_data" / "transactions"), str(out)])[0]


def memory_scaling(args: argparse.Namespace, work: Path, model: Path) -> dict:
    """The MLP end to end at growing sizes: the process tree's peak memory must not grow with the data."""
    found = {}
    print()
    print("| rows (mlp) | files | batchserve rows/s | peak RSS, whole process tree | vs the smallest |")
    print("|---|---|---|---|---|")
    first = None
    # The sizes asked for in files of 1M rows, then the smallest size again in one file: memory must
    # not grow with the data, nor with the size of one file (a file is streamed a batch at a time).
    cases = [(rows, max(2, rows // 1_000_000)) for rows in args.memory_rows] + [(args.memory_rows[0], 1)]
    for rows, files in cases:
        make_data(work / "mem", rows, files, seed=3)
        secs, peak, _ = run_batchserve(model, work / "mem", work / "out_mem", [])
        first = first or peak
        found[f"{rows}x{files}"] = {"rows": rows, "files": files, "rows_per_second": rows / secs,
                                     "peak_rss_bytes": peak}
        print(f"| {rows:,} | {files} | {rows / secs:,.0f} | {peak / 2**20:,.0f} MiB | {peak / first:.2f} |", flush=True)
        shutil.rmtree(work / "mem")
        shutil.rmtree(work / "out_mem")
    return found


def polars_vs_pyarrow(files: list[Path], work: Path) -> dict:
    """Reading, to_numpy of the 32 features, and writing one of our files: polars against pyarrow."""
    import polars as pl

    names = [f"x{j}" for j in range(N_FEATURES)]
    f = files[0]
    out: dict[str, float] = {}

    def clock(label: str, fn: object, reps: int = 3) -> None:
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()  # type: ignore[operator]
            ts.append(time.perf_counter() - t0)
        out[label] = min(ts)

    clock("pyarrow read", lambda: pq.read_table(f))
    clock("polars read", lambda: pl.read_parquet(f))
    t = pq.read_table(f)
    df = pl.read_parquet(f)
    # what the model needs: one C-contiguous float32 matrix
    clock("pyarrow to_numpy", lambda: np.ascontiguousarray(np.column_stack([t.column(n).to_numpy() for n in names])))
    clock("polars to_numpy", lambda: np.ascontiguousarray(df.select(names).to_numpy(order="c")))
    clock("pyarrow write", lambda: pq.write_table(t, work / "pa.parquet"))
    clock("polars write", lambda: df.write_parquet(work / "pl.parquet"))
    rows = t.num_rows
    print()
    print(f"| {rows:,} rows x {t.num_columns} columns | pyarrow rows/s | polars rows/s | polars / pyarrow |")
    print("|---|---|---|---|")
    for step in ("read", "to_numpy", "write"):
        a, b = out[f"pyarrow {step}"], out[f"polars {step}"]
        print(f"| {step} | {rows / a:,.0f} | {rows / b:,.0f} | {a / b:.2f} |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--files", type=int, default=2)
    ap.add_argument("--models", default="logreg,lgbm,mlp")
    ap.add_argument("--workdir", default=str(REPO / "bench_out"))
    ap.add_argument("--extra", default="", help="extra batchserve flags, e.g. '--device cpu'")
    ap.add_argument("--repeat", type=int, default=1, help="interleaved runs per measurement; the best is kept")
    ap.add_argument("--small-files", type=int, default=2000, help="files of 500 rows in the small-files case")
    ap.add_argument("--skip", default="", help="comma-separated peers or sections to skip: plain,pandas,dask,"
                    "models,small,startup,polars,memory")
    ap.add_argument("--memory-rows", default="8000000,32000000",
                    help="row counts for the MLP memory case (the 32M-row input takes ~4.5 GB of disk)")
    args = ap.parse_args()
    args.skip = set(filter(None, args.skip.split(",")))
    args.memory_rows = [int(r) for r in args.memory_rows.split(",") if r]
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    threads = len(os.sched_getaffinity(0))
    import platform

    print(f"# batchserve benchmark: {args.rows:,} rows x {N_FEATURES} float32 features + 6 other columns, "
          f"{args.files} files, {threads} cores ({platform.processor() or platform.machine()}), "
          f"{psutil.virtual_memory().total / 2**30:.0f} GiB, best of {args.repeat}")
    t0 = time.perf_counter()
    files = make_data(work / "data", args.rows, args.files)
    paths = build_models(work / "models", files)
    print(f"# generated data and models in {time.perf_counter() - t0:.1f}s")
    report: dict = {"rows": args.rows, "cores": threads}
    if "models" not in args.skip:
        report["models"] = model_table(args, work, files, paths)
    if "small" not in args.skip:
        report["small_files"] = small_files(args, work, paths["mlp"])
    if "startup" not in args.skip:
        report["startup"] = startup(args, work)
    if "polars" not in args.skip:
        report["polars"] = polars_vs_pyarrow(files, work)
    if "memory" not in args.skip:
        report["memory"] = memory_scaling(args, work, paths["mlp"])
    (work / "results.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"# results: {work / 'results.json'}")


if __name__ == "__main__":
    main()
