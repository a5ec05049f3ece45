"""`make bench`: batchserve end to end against baselines measured in the same run.

For each model (LogisticRegression, 200-tree LightGBM, MLP 32-512-512-1):
  (a) onnxruntime alone, features already in memory, same batch size and threads;
  (b) pyarrow reading and writing the same files, no model (measured once);
  (c) `batchserve score` end to end (CLI in a subprocess, local cluster included);
  (e) with `--challenger` (champion-challenger in one pass): against (c) and the challenger's raw
      onnxruntime time, i.e. what the run would cost if the challenger added its inference and nothing else.
Prints rows/s, peak RSS (whole process tree) and the ratios c/a and c/b, so that
noise on a shared machine cancels out. Not a test: nothing here asserts a speed.

    python tests/bench.py --rows 4000000 [--files 16] [--models logreg,lgbm,mlp] [--drift]
"""

from __future__ import annotations

import argparse
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
        cols = {"id": pa.array(np.arange(i * per, i * per + n, dtype=np.int64))}
        cols.update({f"x{j}": x[:, j] for j in range(N_FEATURES)})
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


def bench_raw_ort(model_path: Path, x: np.ndarray, threads: int) -> float:
    """(a) rows/s of session.run over in-memory batches: the ceiling for this model here."""
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    sess.run(None, {name: x[:16]})
    t0 = time.perf_counter()
    for s in range(0, len(x), BATCH):
        sess.run(None, {name: x[s : s + BATCH]})
    return len(x) / (time.perf_counter() - t0)


def bench_pyarrow_copy(files: list[Path], src_root: Path, dst_root: Path) -> tuple[float, int]:
    """(b) rows/s of streaming every file through pyarrow to a new file, no model."""
    if dst_root.exists():
        shutil.rmtree(dst_root)
    rows = 0
    with PeakRSS(os.getpid()) as mem:
        t0 = time.perf_counter()
        for f in files:
            out = dst_root / f.relative_to(src_root)
            out.parent.mkdir(parents=True, exist_ok=True)
            pf = pq.ParquetFile(f)
            with pq.ParquetWriter(out, pf.schema_arrow) as w:
                for b in pf.iter_batches(batch_size=BATCH):
                    w.write_batch(b)
                    rows += b.num_rows
        secs = time.perf_counter() - t0
    return rows / secs, mem.peak


def bench_batchserve(model_path: Path, data: Path, out: Path, extra: list[str]) -> tuple[float, int, dict]:
    """(c) the CLI end to end: plan, local cluster start, scoring, commit, manifest."""
    if out.exists():
        shutil.rmtree(out)
    exe = Path(sys.executable).parent / "batchserve"
    cmd = [str(exe), "score", "--model", str(model_path), "--input", str(data), "--output", str(out),
           "--batch-size", str(BATCH), "--quiet", *extra]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with PeakRSS(proc.pid) as mem:
        _, stderr = proc.communicate()
    secs = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"batchserve failed ({proc.returncode}): {stderr.strip()}")
    manifest = json.loads((out / "_manifest.json").read_text())
    return manifest["totals"]["rows"] / secs, mem.peak, manifest


def bench_challenger(args: argparse.Namespace, by_name: dict, paths: dict, work: Path, extra: list[str]) -> None:
    """(e): the same run with a challenger; its cost should be its own inference and nothing else."""
    champ, chall = args.challenger.split(":")
    if champ not in by_name or chall not in by_name:
        print(f"# (e) skipped: --models must include {champ} and {chall}")
        return
    c, raw = by_name[champ]["batchserve_rows_s"], by_name[chall]["raw_ort_rows_s"]
    with_ch = 0.0
    for _ in range(args.repeat):
        out2 = work / f"out_{champ}_vs_{chall}"
        if out2.exists():
            shutil.rmtree(out2)
        rps = bench_batchserve(paths[champ], work / "data", work / f"out_{champ}_ch", [
            *extra, "--challenger", str(paths[chall]), "--challenger-output", str(out2)])[0]
        with_ch = max(with_ch, rps)
    expected = 1 / (1 / c + 1 / raw)
    print()
    print("| champion | challenger | (c) rows/s alone | (e) rows/s with challenger | e/c "
          "| challenger raw ORT rows/s | expected if only its inference is added | e/expected |")
    print("|" + "---|" * 8)
    print(f"| {champ} | {chall} | {c:,.0f} | {with_ch:,.0f} | {with_ch / c:.2f} | {raw:,.0f} | {expected:,.0f} "
          f"| {with_ch / expected:.2f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=4_000_000)
    ap.add_argument("--files", type=int, default=16)
    ap.add_argument("--models", default="logreg,lgbm,mlp")
    ap.add_argument("--workdir", default=str(REPO / "bench_out"))
    ap.add_argument("--workers", type=int, default=None, help="batchserve --workers (default: its own choice)")
    ap.add_argument("--extra", default="", help="extra batchserve flags, e.g. '--device cpu'")
    ap.add_argument("--repeat", type=int, default=2, help="runs of (c) and (d), alternated; best of each is kept")
    ap.add_argument("--challenger", default="lgbm:mlp", help="CHAMPION:CHALLENGER for (e), or '' to skip")
    args = ap.parse_args()
    work = Path(args.workdir)
    threads = len(os.sched_getaffinity(0))
    print(f"# batchserve benchmark: {args.rows:,} rows x {N_FEATURES} float32 features, {args.files} files, "
          f"{threads} cores, batch {BATCH:,}")
    t0 = time.perf_counter()
    files = make_data(work / "data", args.rows, args.files)
    paths = build_models(work / "models", files)
    print(f"# generated data and models in {time.perf_counter() - t0:.1f}s")
    copy_rps, copy_peak = bench_pyarrow_copy(files, work / "data", work / "copy")
    x = load_features(files)
    extra = args.extra.split() + (["--workers", str(args.workers)] if args.workers else [])
    results = []
    header = ("| model | (a) raw ORT rows/s | (b) pyarrow r+w rows/s | (c) batchserve rows/s | c/a | c/b "
              "| peak RSS (c) | (d) --no-drift rows/s | c/d (drift cost) |")
    print()
    print(header)
    print("|" + "---|" * 9)
    for name in args.models.split(","):
        raw = bench_raw_ort(paths[name], x, threads)
        bs, peak, nodrift, m = 0.0, 0, 0.0, {}
        for _ in range(args.repeat):  # alternate drift on/off so machine noise hits both alike
            rps, pk, man = bench_batchserve(paths[name], work / "data", work / f"out_{name}", extra)
            if rps > bs:
                bs, peak, m = rps, pk, man
            nd = bench_batchserve(paths[name], work / "data", work / f"out_{name}_nodrift", [*extra, "--no-drift"])[0]
            nodrift = max(nodrift, nd)
        t = m["totals"]
        row = {
            "model": name, "raw_ort_rows_s": raw, "pyarrow_rows_s": copy_rps, "batchserve_rows_s": bs,
            "c_over_a": bs / raw, "c_over_b": bs / copy_rps, "peak_rss_bytes": peak,
            "no_drift_rows_s": nodrift, "c_over_d": bs / nodrift,
            "split_s": [t["read_seconds"], t["infer_seconds"], t["write_seconds"]],
            "workers": m["run"]["engine"]["workers"],
        }
        results.append(row)
        print(f"| {name} | {raw:,.0f} | {copy_rps:,.0f} | {bs:,.0f} | {bs / raw:.2f} | {bs / copy_rps:.2f} "
              f"| {peak / 2**20:,.0f} MiB | {nodrift:,.0f} | {bs / nodrift:.2f} |", flush=True)
    by_name = {r["model"]: r for r in results}
    if args.challenger:
        bench_challenger(args, by_name, paths, work, extra)
    print()
    print(f"# (b) pyarrow copy peak RSS {copy_peak / 2**20:,.0f} MiB (bench process, features not loaded yet); "
          f"(a) holds all features in memory: {x.nbytes / 2**20:,.0f} MiB")
    (work / "results.json").write_text(json.dumps({"rows": args.rows, "cores": threads, "results": results}, indent=2))
    print(f"# results: {work / 'results.json'}")


if __name__ == "__main__":
    main()
