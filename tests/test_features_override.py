"""``--features`` against the model's own ``feature_names`` metadata (issue 19, part 2): two columns
swapped used to score silently wrong, and ``validate`` said ok. Now it is one line naming both lists,
unless ``--features-override`` says the user means it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import SAMPLE_DATA, SAMPLE_MODEL
from tests.test_cli import BIN

pytestmark = pytest.mark.slow

METADATA = ["amount", "hour", "merchant_category", "distance_km", "card_age_days", "n_tx_24h", "is_online",
            "is_foreign"]
SWAPPED = ["hour", "amount", *METADATA[2:]]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("features", "what"), [
    (SWAPPED, "the same columns in another order"),
    ([*METADATA[:7], "is_fraud"], "other columns"),
])
@pytest.mark.parametrize("command", ["validate", "score"])
def test_features_that_contradict_the_model_are_one_line(tmp_path: Path, command: str, features: list[str],
                                                         what: str) -> None:
    extra = ["-o", str(tmp_path / "out")] if command == "score" else []
    proc = _cli(command, "-m", str(SAMPLE_MODEL), "-i", str(SAMPLE_DATA), "--features", ",".join(features), *extra)
    assert proc.returncode == 1 and proc.stdout == "" and proc.stderr.count("\n") == 1, proc.stderr
    assert what in proc.stderr and f"--features {','.join(features)}" in proc.stderr
    assert f"feature_names {','.join(METADATA)}" in proc.stderr and "--features-override" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_the_override_scores_with_the_users_order_and_says_so(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = _cli("score", "-m", str(SAMPLE_MODEL), "-i", str(SAMPLE_DATA / "date=2026-11-01"), "-o", str(out), "-q",
                "--features", ",".join(SWAPPED), "--features-override", "--no-drift")
    assert proc.returncode == 0, proc.stderr
    m = json.loads((out / "_manifest.json").read_text())
    assert m["model"]["features"] == SWAPPED and m["model"]["feature_source"] == "flag (overrides metadata)"
    same = _cli("validate", "-m", str(SAMPLE_MODEL), "-i", str(SAMPLE_DATA), "--features", ",".join(METADATA))
    assert same.returncode == 0 and "features (flag)" in same.stdout  # agreeing with the metadata is fine
