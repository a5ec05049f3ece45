"""make bench-serve: a real load generator (wrk) on loopback against ``batchserve serve`` and, in the
same run, against the hand-written Starlette + onnxruntime endpoint (tests/bench_baseline.py), on the
sample model, an MLP 32-512-512-1 and a 200-tree LightGBM model. Prints ratios, so noise cancels.

    python tests/bench_serve.py [--seconds 5] [--models sample,mlp,gbdt]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests import models
from tests.serving import REPO, Server

N = 32


def build(work: Path) -> dict[str, tuple[Path, str, int]]:
    """name -> (model path, input name, features)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20_000, N)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] * x[:, 2] + rng.normal(size=len(x)) > 0).astype(np.int64)
    names = [f"x{j}" for j in range(N)]
    data, _ = models.mlp(N, (512, 512))
    (work / "mlp.onnx").write_bytes(models.set_feature_names(data, names))
    data, _ = models.lightgbm(x, y, n_estimators=200, names=names)
    (work / "gbdt.onnx").write_bytes(data)
    return {"sample": (REPO / "sample_data/model/1/model.onnx", "input", 8), "mlp": (work / "mlp.onnx", "X", N),
            "gbdt": (work / "gbdt.onnx", "input", N)}


def bodies(work: Path, name: str, inp: str, k: int) -> dict[str, Path]:
    rng = np.random.default_rng(1)
    out = {}
    for rows in (1, 1000):
        x = rng.standard_normal((rows, k)).astype(np.float32)
        doc = {"inputs": [{"name": inp, "datatype": "FP32", "shape": [rows, k], "data": x.ravel().tolist()}]}
        path = work / f"{name}-{rows}.json"
        path.write_bytes(json.dumps(doc).encode())
        out[f"json{rows}"] = path
        head = json.dumps({"inputs": [{"name": inp, "datatype": "FP32", "shape": [rows, k],
                                       "parameters": {"binary_data_size": x.nbytes}}],
                           "parameters": {"binary_data_output": True}}).encode()
        path = work / f"{name}-{rows}.bin"
        path.write_bytes(head + x.tobytes())
        out[f"bin{rows}"] = path
        (work / f"{name}-{rows}.len").write_text(str(len(head)))
    return out


def lua(work: Path, body: Path, header_length: int | None) -> Path:
    script = work / (body.name + ".lua")
    extra = f'wrk.headers["Inference-Header-Content-Length"] = "{header_length}"\n' if header_length else ""
    script.write_text(f'wrk.method = "POST"\nlocal f = io.open("{body}", "rb")\nwrk.body = f:read("*all")\n'
                      f'f:close()\nwrk.headers["Content-Type"] = "application/json"\n{extra}')
    return script


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s|m)", text)
    if m is None:
        raise SystemExit(f"cannot read a latency from wrk: {text!r}")
    value, unit = m.groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def wrk(url: str, script: Path, conns: int, seconds: int) -> dict[str, float]:
    threads = min(2, conns)
    done = subprocess.run(["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--latency", "-s", str(script), url],
                          capture_output=True, text=True, timeout=seconds + 60)
    text = done.stdout
    if "Requests/sec" not in text:
        raise SystemExit(f"wrk failed against {url}:\n{text}\n{done.stderr}")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if errors:
        raise SystemExit(f"non-2xx answers under load:\n{text}")
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)),  # type: ignore[union-attr]
            "p50": _ms(re.search(r"^\s+50%\s+(\S+)", text, re.M).group(1)),  # type: ignore[union-attr]
            "p99": _ms(re.search(r"^\s+99%\s+(\S+)", text, re.M).group(1))}  # type: ignore[union-attr]


class Baseline:
    def __init__(self, model: Path, port: int) -> None:
        env = {**os.environ, "BASELINE_MODEL": str(model), "PYTHONPATH": str(REPO / "tests")}
        self.proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "bench_baseline:app", "--port", str(port),
                                      "--log-level", "warning", "--no-access-log"], env=env, cwd=REPO)
        self.url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                urllib.request.urlopen(self.url + "/", timeout=1)
            except urllib.error.HTTPError:
                return
            except OSError:
                time.sleep(0.05)
        raise SystemExit("baseline did not start")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def hybrid(work: Path, seconds: int) -> dict:
    """Throughput with the request log on and with a shadow challenger, against the same server without
    either, measured in this run; and a nightly score looked up by key."""
    sample = REPO / "sample_data/model"
    files = bodies(work, "hybrid", "input", 8)
    script = lua(work, files["json1"], None)
    url_path = "/v2/models/model/infer"
    cases = {"off": [], "request log on": ["--log-requests", str(work / "logs")],
             "shadow on (the same model again)": ["--challenger", str(sample)],
             "log + drift + shadow": ["--log-requests", str(work / "logs2"), "--challenger", str(sample),
                                      "--reference", str(REPO / "sample_data/reference.json")]}
    out: dict[str, float] = {}
    for case, flags in cases.items():
        server = Server(["--model", str(sample), "--no-access-log", *flags])
        try:
            wrk(server.url + url_path, script, 32, 1)
            out[case] = wrk(server.url + url_path, script, 32, seconds)["rps"]
        finally:
            server.stop()
    print("\n| 1 row, c=32, sample model | requests/s | vs off |\n|---|---|---|")
    for case, rps in out.items():
        print(f"| {case} | {rps:,.0f} | {rps / out['off']:.2f}x |")
    return out


def slow_shadow(work: Path, seconds: int, rounds: int = 3) -> dict:
    """A challenger far slower than the sample model (a dense 8-4096-4096-1 MLP on its features, about 300x its
    cost per row): with --shadow-budget the answers keep their throughput and p99 whatever the challenger
    costs. The cases are interleaved over ``rounds`` rounds and the medians printed (single 5 s runs on two
    cores moved by 10%)."""
    sample = REPO / "sample_data/model"
    script = lua(work, bodies(work, "hybrid", "input", 8)["json1"], None)
    features = ["amount", "hour", "merchant_category", "distance_km", "card_age_days", "n_tx_24h", "is_online",
                "is_foreign"]
    slow, _ = models.mlp(len(features), hidden=(4096, 4096), seed=5)
    (work / "slow-challenger.onnx").write_bytes(models.set_feature_names(slow, features))
    flags = ["--challenger", str(work / "slow-challenger.onnx")]
    cases = {"off": [], "slow shadow, --shadow-budget 0.1 (default)": flags,
             "slow shadow, --shadow-budget 1 (no budget)": [*flags, "--shadow-budget", "1"]}
    runs: dict[str, list[dict[str, float]]] = {case: [] for case in cases}
    for _ in range(rounds):
        for case, extra in cases.items():
            server = Server(["--model", str(sample), "--no-access-log", *extra])
            try:
                url = server.url + "/v2/models/model/infer"
                wrk(url, script, 32, 1)
                r = wrk(url, script, 32, seconds)
                if extra:  # past the budget, dropped, or still waiting behind a challenger that cannot keep up
                    r["answered"] = _metric(server.url, "batchserve_serve_rows_total")
                    doc = json.loads(urllib.request.urlopen(server.url + "/v2/models/model/drift", timeout=60).read())
                    r["skipped"] = r["answered"] - doc["challenger"]["scored_rows"]
                runs[case].append(r)
            finally:
                server.stop()
    med = {case: {k: float(np.median([r[k] for r in rs])) for k in rs[0]} for case, rs in runs.items()}
    off = med["off"]
    print(f"\n| slow challenger, 1 row, c=32, median of {rounds} | requests/s | vs off | p99 ms | p99 vs off | "
          "rows unshadowed |\n|---|---|---|---|---|---|")
    for case, r in med.items():
        share = f"{r['skipped'] / r['answered']:.0%}" if "skipped" in r else "-"
        print(f"| {case} | {r['rps']:,.0f} | {r['rps'] / off['rps']:.2f}x | {r['p99']:.2f} | "
              f"{r['p99'] / off['p99']:.2f}x | {share} |")
    return med


def _metric(url: str, name: str) -> float:
    text = urllib.request.urlopen(url + "/metrics", timeout=60).read().decode()
    return next(float(ln.split()[1]) for ln in text.splitlines() if ln.startswith(name + " "))


def _metric(url: str, name: str) -> float:
    text = urllib.request.urlopen(url + "/metrics", timeout=60).read().decode()
    return next(float(ln.split()[1]) for ln in text.splitlines() if ln.startswith(name + " "))


def nightly(work: Path, rows: int, seconds: int) -> dict:
    """A scored output of ``rows`` keys: memory of the served columns against their Arrow size, and a
    lookup's latency (wrk, one key a request, --precomputed-only)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = work / "nightly-in"
    data.mkdir()
    rng = np.random.default_rng(3)
    files = 10
    for i in range(files):
        n = rows // files
        cols = {"id": pa.array(np.arange(i * n, (i + 1) * n, dtype=np.int64))}
        for f in ("amount", "hour", "merchant_category", "distance_km", "card_age_days", "n_tx_24h", "is_online",
                  "is_foreign"):
            cols[f] = pa.array(rng.random(n, dtype=np.float32))
        pq.write_table(pa.table(cols), data / f"part-{i}.parquet")
    out = work / "nightly-out"
    subprocess.run([sys.executable, "-m", "batchserve", "score", "-m", str(REPO / "sample_data/model"), "-i",
                    str(data), "-o", str(out), "--keep", "id", "-q"], check=True, cwd=REPO)
    probe = ("import resource, sys, json; from batchserve.online.precomputed import load_nightly; "
             "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; import pyarrow; "
             "n = load_nightly(sys.argv[1], 'id', {}); "
             "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
             "import psutil; rss = psutil.Process().memory_info().rss; "
             "print(json.dumps({'arrow': n.nbytes(), 'rss_now': rss, 'peak_kib': after - before, 'rows': n.rows}))")
    done = subprocess.run([sys.executable, "-c", probe, str(out)], capture_output=True, text=True, check=True,
                          cwd=REPO)
    mem = json.loads(done.stdout)
    base = subprocess.run([sys.executable, "-c", "import psutil, pyarrow, numpy, batchserve.online.precomputed; "
                           "print(psutil.Process().memory_info().rss)"], capture_output=True, text=True,
                          check=True, cwd=REPO)
    held = mem["rss_now"] - int(base.stdout)
    body = work / "key.json"
    body.write_text(json.dumps({"inputs": [{"name": "id", "datatype": "INT64", "shape": [1], "data": [rows // 2]}]}))
    server = Server(["--model", str(REPO / "sample_data/model"), "--precomputed", str(out), "--key", "id",
                     "--precomputed-only", "--no-access-log"])
    try:
        script = lua(work, body, None)
        wrk(server.url + "/v2/models/model/infer", script, 1, 1)
        lookup = wrk(server.url + "/v2/models/model/infer", script, 1, seconds)
    finally:
        server.stop()
    print(f"\n| nightly scores, {mem['rows']:,} keys | |\n|---|---|")
    print(f"| Arrow size of key + prediction columns | {mem['arrow'] / 2**20:,.0f} MiB |")
    print(f"| memory held after loading (RSS over a bare interpreter with the same imports) | "
          f"{held / 2**20:,.0f} MiB ({held / mem['arrow']:.2f}x the Arrow size) |")
    print(f"| lookup by key, 1 a request, c=1: p50 / p99 | {lookup['p50']:.2f} / {lookup['p99']:.2f} ms |")
    return {"rows": mem["rows"], "arrow_bytes": mem["arrow"], "held_bytes": held, "lookup": lookup}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--models", default="sample,mlp,gbdt")
    ap.add_argument("--extra", default="", help="extra batchserve serve flags, e.g. '--max-batch-size 64'")
    ap.add_argument("--hybrid", action=argparse.BooleanOptionalAction, default=True,
                    help="also measure logging, shadow and nightly-score lookups")
    ap.add_argument("--nightly-rows", type=int, default=10_000_000)
    ap.add_argument("--only-slow-shadow", action="store_true",
                    help="measure only the slow-challenger cases (the shadow budget)")
    ap.add_argument("--nightly", action=argparse.BooleanOptionalAction, default=True,
                    help="with --hybrid, also measure nightly scores (memory at --nightly-rows keys)")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install wrk, or make system-deps)")
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    if args.only_slow_shadow:
        slow_shadow(work, args.seconds)
        return
    built = build(work)
    report = {}
    print("| model | case | hand-written Starlette | batchserve serve | ratio |\n|---|---|---|---|---|")
    for name in args.models.split(","):
        path, inp, k = built[name]
        files = bodies(work, name, inp, k)
        scripts = {key: lua(work, p, int((work / p.name.replace(p.suffix, ".len")).read_text())
                            if p.suffix == ".bin" else None) for key, p in files.items()}
        path_url = f"/v2/models/{name}/infer"
        results: dict[str, dict[str, dict[str, float]]] = {}
        base = Baseline(path, free_port())
        try:
            wrk(base.url + path_url, scripts["json1"], 1, 1)  # warm-up
            results["base"] = {"c1": wrk(base.url + path_url, scripts["json1"], 1, args.seconds),
                               "c32": wrk(base.url + path_url, scripts["json1"], 32, args.seconds),
                               "json1000": wrk(base.url + path_url, scripts["json1000"], 2, args.seconds)}
        finally:
            base.stop()
        server = Server(["--model", str(path), "--name", name, "--no-access-log", *args.extra.split()])
        try:
            url = server.url + path_url
            wrk(url, scripts["json1"], 1, 1)
            results["ours"] = {"c1": wrk(url, scripts["json1"], 1, args.seconds),
                               "c32": wrk(url, scripts["json1"], 32, args.seconds),
                               "json1000": wrk(url, scripts["json1000"], 2, args.seconds),
                               "bin1000": wrk(url, scripts["bin1000"], 2, args.seconds)}
        finally:
            server.stop()
        b, o = results["base"], results["ours"]
        rows = [("1 row, c=1, p50 ms", b["c1"]["p50"], o["c1"]["p50"], b["c1"]["p50"] / o["c1"]["p50"]),
                ("1 row, c=1, p99 ms", b["c1"]["p99"], o["c1"]["p99"], b["c1"]["p99"] / o["c1"]["p99"]),
                ("1 row, c=32, requests/s", b["c32"]["rps"], o["c32"]["rps"], o["c32"]["rps"] / b["c32"]["rps"]),
                ("1,000 rows JSON, c=2, requests/s", b["json1000"]["rps"], o["json1000"]["rps"],
                 o["json1000"]["rps"] / b["json1000"]["rps"]),
                ("1,000 rows binary, c=2, requests/s", None, o["bin1000"]["rps"],
                 o["bin1000"]["rps"] / o["json1000"]["rps"])]
        for case, bv, ov, ratio in rows:
            shown = "-" if bv is None else f"{bv:,.2f}"
            note = " (vs our JSON)" if bv is None else ""
            print(f"| {name} | {case} | {shown} | {ov:,.2f} | {ratio:.2f}x{note} |")
        report[name] = results
    if args.hybrid:
        report["hybrid"] = hybrid(work, args.seconds)
        report["slow_shadow"] = slow_shadow(work, args.seconds)
        if args.nightly:
            report["nightly"] = nightly(work, args.nightly_rows, args.seconds)
    out = REPO / "bench_out"
    out.mkdir(exist_ok=True)
    (out / "serve.json").write_text(json.dumps(report, indent=1))
    print("speed-ups: >1 is batchserve faster (latency: baseline/ours; throughput: ours/baseline)")


if __name__ == "__main__":
    main()
