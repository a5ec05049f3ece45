"""Accuracy of batchserve's drift estimates against numpy/scipy on the full raw arrays.

Each side is summarised in 65,536-row batches and merged, as the workers do, then
compared with the exact value computed from all rows. Not a test (tests/test_drift.py
pins the tolerances); this prints the figures quoted in the README and closing note.

    .venv/bin/python tests/drift_accuracy.py [--rows 1000000] [--repeat 20]

``--repeat N`` summarises each case N times (the sample offset and the sketch's compaction are
random) and prints the worst error per metric over all of them: where the test bounds come from.
"""

from __future__ import annotations

import argparse

import numpy as np
import scipy.stats as ss
from scipy.spatial.distance import jensenshannon

from batchserve import drift


def summarize(a: np.ndarray, batch: int = 65_536) -> drift.ColumnSummary:
    out = drift.ColumnSummary()
    for i in range(0, len(a), batch):
        out = drift.merge(out, drift.summarize_numeric(a[i : i + batch]))
    return out


def shares(r: np.ndarray, c: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    edges = np.quantile(r, np.arange(1, bins) / bins)
    rs = np.bincount(np.searchsorted(edges, r, side="right"), minlength=bins) / len(r)
    cs = np.bincount(np.searchsorted(edges, c, side="right"), minlength=bins) / len(c)
    return rs, cs


def exact_psi(r: np.ndarray, c: np.ndarray) -> float:
    rs, cs = (np.maximum(x, drift.PSI_EPSILON) for x in shares(r, c, 10))
    return float(np.sum((cs - rs) * np.log(cs / rs)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    n = args.rows
    g = np.random.default_rng(0)
    cases = {
        "identical": (g.normal(size=n), g.normal(size=n)),
        "shifted +0.3 sd": (g.normal(size=n), g.normal(0.3, 1, n)),
        "scaled x1.5": (g.normal(size=n), g.normal(0, 1.5, n)),
        "log-normal": (g.lognormal(3, 1, n), g.lognormal(3.2, 1, n)),
        "near one": (1 - g.beta(1, 60, n), 1 - g.beta(1, 45, n)),
        "student t(3)": (g.standard_t(3, n) * 50, g.standard_t(3, n) * 50 + 10),
    }
    print(f"# {n:,} rows per side; estimate / exact (|error|)")
    print("| data | KS | PSI | JS | Wasserstein/std |")
    print("|---|---|---|---|---|")
    worst = dict.fromkeys(("ks", "psi", "js", "w"), 0.0)
    for name, (r, c) in cases.items():
        for _ in range(args.repeat - 1):  # extra repetitions only feed the worst-case figures
            R, C = summarize(r), summarize(c)
            for key, est, exact in (("ks", drift.ks(R, C), ss.ks_2samp(r, c).statistic),
                                    ("psi", drift.psi(R, C), exact_psi(r, c)),
                                    ("js", drift.js(R, C), jensenshannon(*shares(r, c, 20), base=2)),
                                    ("w", drift.wasserstein(R, C), ss.wasserstein_distance(r, c) / r.std())):
                worst[key] = max(worst[key], abs((est or 0.0) - exact))
        R, C = summarize(r), summarize(c)
        pairs = {
            "ks": (drift.ks(R, C), ss.ks_2samp(r, c).statistic),
            "psi": (drift.psi(R, C), exact_psi(r, c)),
            "js": (drift.js(R, C), jensenshannon(*shares(r, c, 20), base=2)),
            "w": (drift.wasserstein(R, C), ss.wasserstein_distance(r, c) / r.std()),
        }
        cells = []
        for key, (est, exact) in pairs.items():
            err = abs(est - exact)
            worst[key] = max(worst[key], err)
            cells.append(f"{est:.4f} / {exact:.4f} ({err:.4f})")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"# worst |error| over {args.repeat} run(s) per case: " + ", ".join(f"{k} {v:.4f}" for k, v in worst.items()))


if __name__ == "__main__":
    main()
