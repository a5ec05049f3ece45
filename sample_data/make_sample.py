"""Regenerate the bundled sample: card transactions in hive partitions + a fraud model.

Deterministic (seeded), so the committed files can be rebuilt bit-for-bit in
content. Run from the repo root::

    python sample_data/make_sample.py

Writes:
  sample_data/transactions/date=YYYY-MM-DD/part-N.parquet   ~100k rows in all
  sample_data/model/1/model.onnx                            LightGBM -> ONNX, feature_names metadata
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FEATURES = [
    "amount",
    "hour",
    "merchant_category",
    "distance_km",
    "card_age_days",
    "n_tx_24h",
    "is_online",
    "is_foreign",
]
DATES = ["2026-11-01", "2026-11-02", "2026-11-03", "2026-11-04", "2026-11-05"]
ROWS_PER_FILE = 10_000
FILES_PER_DATE = 2
SEED = 20261121


def make_transactions(n: int, rng: np.random.Generator, start_id: int = 0) -> pa.Table:
    """A plausible transactions table; fraud depends non-linearly on the features."""
    amount = np.round(rng.lognormal(3.5, 1.1, n), 2)
    hour = rng.integers(0, 24, n).astype(np.int8)
    merchant = rng.integers(0, 20, n).astype(np.int16)
    distance = np.round(rng.exponential(12.0, n), 3)
    card_age = rng.integers(1, 3650, n).astype(np.int32)
    n_tx = rng.poisson(3, n).astype(np.int32)
    online = rng.random(n) < 0.35
    foreign = rng.random(n) < 0.08
    logit = (
        -5.0
        + 0.9 * np.log1p(amount / 100)
        + 1.2 * ((hour < 5) | (hour > 22))
        + 0.04 * distance / 10
        + 1.5 * foreign
        + 0.6 * online
        - 0.4 * np.log1p(card_age / 365)
        + 0.25 * n_tx
        + 0.8 * np.isin(merchant, [3, 7, 15])
    )
    fraud = rng.random(n) < 1 / (1 + np.exp(-logit))
    ids = np.arange(start_id, start_id + n)
    return pa.table(
        {
            "transaction_id": pa.array([f"tx-{i:08d}" for i in ids]),
            "card_id": pa.array([f"card-{c:06d}" for c in rng.integers(0, 40_000, n)]),
            "amount": amount,
            "hour": hour,
            "merchant_category": merchant,
            "distance_km": distance,
            "card_age_days": card_age,
            "n_tx_24h": n_tx,
            "is_online": online,
            "is_foreign": foreign,
            "is_fraud": fraud,
        }
    )


def train_model(table: pa.Table, seed: int) -> bytes:
    """A LightGBM classifier exported to ONNX (ZipMap probabilities, the converter default)."""
    import lightgbm as lgb
    import onnx
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    x = np.column_stack([table.column(f).to_numpy().astype(np.float32) for f in FEATURES])
    y = table.column("is_fraud").to_numpy().astype(int)
    clf = lgb.LGBMClassifier(n_estimators=60, num_leaves=15, learning_rate=0.1, random_state=seed, verbose=-1)
    clf.fit(x, y)
    onx = convert_lightgbm(
        clf, initial_types=[("input", FloatTensorType([None, len(FEATURES)]))], target_opset=15
    )
    onnx.helper.set_model_props(
        onx,
        {
            "feature_names": json.dumps(FEATURES),
            "model_name": "card-fraud",
            "trained_on": "sample_data/transactions (seeded)",
        },
    )
    return onx.SerializeToString()


def main(root: Path) -> None:
    rng = np.random.default_rng(SEED)
    data_dir = root / "transactions"
    next_id = 0
    parts = []
    for date in DATES:
        for k in range(FILES_PER_DATE):
            table = make_transactions(ROWS_PER_FILE, rng, next_id)
            next_id += ROWS_PER_FILE
            out = data_dir / f"date={date}" / f"part-{k}.parquet"
            out.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, out, row_group_size=5_000)
            parts.append(table)
    model_dir = root / "model" / "1"
    model_dir.mkdir(parents=True, exist_ok=True)
    train = make_transactions(50_000, np.random.default_rng(SEED + 1), 10_000_000)
    (model_dir / "model.onnx").write_bytes(train_model(train, SEED))
    print(f"wrote {next_id} rows in {len(parts)} files under {data_dir} and {model_dir / 'model.onnx'}")


def parse_args(argv: list[str]) -> Path:
    """The folder to write into; argparse answers --help (it used to become a folder named --help)."""
    import argparse

    parser = argparse.ArgumentParser(description="Regenerate the bundled sample (seeded): transactions and a model.")
    parser.add_argument("root", nargs="?", default=os.path.dirname(os.path.abspath(__file__)),
                        help="where transactions/ and model/ go (default: this script's folder)")
    return Path(parser.parse_args(argv).root)


if __name__ == "__main__":
    main(parse_args(sys.argv[1:]))
