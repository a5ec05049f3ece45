"""The peers `make bench` measures batchserve against, each run as its own process so wall time
and the process tree's memory are measured the same way for everyone:

    python tests/bench_peers.py KIND MODEL INPUT_DIR OUTPUT_DIR BATCH

KIND: ``copy`` (pyarrow read+write, no model), ``plain`` (a hand-written pyarrow + onnxruntime
script: read a file, score it in batches, write it), ``pandas`` (the same with pandas),
``dask`` (dask.dataframe map_partitions, one onnxruntime session per worker process).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

N_FEATURES = 32
FEATURES = [f"x{j}" for j in range(N_FEATURES)]


def _session(model: str, threads: int) -> object:
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def _score(sess: object, x: np.ndarray, batch: int) -> np.ndarray:
    name = sess.get_inputs()[0].name  # type: ignore[attr-defined]
    outs = []
    for s in range(0, len(x), batch):
        res = sess.run(None, {name: x[s : s + batch]})  # type: ignore[attr-defined]
        # the last numeric output (a ZipMap's list of dicts is skipped for the label before it)
        last = next(np.asarray(r) for r in reversed(res) if isinstance(r, np.ndarray))
        outs.append(last[:, -1] if last.ndim == 2 else last.reshape(len(last), -1)[:, 0])
    return np.concatenate(outs) if outs else np.zeros(0, np.float32)


def _files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.parquet"))


def copy(model: str, src: Path, dst: Path, batch: int) -> None:
    import pyarrow.parquet as pq

    for f in _files(src):
        out = dst / f.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        pf = pq.ParquetFile(f)
        with pq.ParquetWriter(out, pf.schema_arrow) as w:
            for b in pf.iter_batches(batch_size=batch):
                w.write_batch(b)


def plain(model: str, src: Path, dst: Path, batch: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sess = _session(model, len(os.sched_getaffinity(0)))
    for f in _files(src):
        t = pq.read_table(f)
        x = np.column_stack([t.column(c).to_numpy() for c in FEATURES]).astype(np.float32, copy=False)
        t = t.append_column("score", pa.array(_score(sess, np.ascontiguousarray(x), batch)))
        out = dst / f.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(t, out)


def pandas_loop(model: str, src: Path, dst: Path, batch: int) -> None:
    import pandas as pd

    sess = _session(model, len(os.sched_getaffinity(0)))
    for f in _files(src):
        df = pd.read_parquet(f)
        df["score"] = _score(sess, df[FEATURES].to_numpy(np.float32), batch)
        out = dst / f.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        df.to_parquet(out)


_SESSIONS: dict[str, object] = {}


def _dask_partition(df: object, model: str, batch: int, threads: int) -> object:
    sess = _SESSIONS.get(model)
    if sess is None:  # one session per worker process, built on its first partition
        sess = _SESSIONS[model] = _session(model, threads)
    df = df.copy()  # type: ignore[attr-defined]
    df["score"] = _score(sess, df[FEATURES].to_numpy(np.float32), batch)  # type: ignore[index]
    return df


def dask_frame(model: str, src: Path, dst: Path, batch: int) -> None:
    import dask.dataframe as dd
    from distributed import Client, LocalCluster

    cores = len(os.sched_getaffinity(0))
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=50) as lc, Client(lc):
        frame = dd.read_parquet(str(src))
        meta = frame._meta.assign(score=np.float32(0))
        frame.map_partitions(_dask_partition, model, batch, cores, meta=meta).to_parquet(str(dst), schema=None)


KINDS = {"copy": copy, "plain": plain, "pandas": pandas_loop, "dask": dask_frame}

if __name__ == "__main__":
    kind, model, src, dst, batch = sys.argv[1:6]
    KINDS[kind](model, Path(src), Path(dst), int(batch))
