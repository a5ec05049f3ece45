"""Online shadow: a challenger scores the rows the champion answered, after the answer, off the
request's path; its errors never reach a client. Agreement is measured as the batch challenger section
measures it (:mod:`batchserve.compare`: mean and max absolute difference, label agreement, PSI of the
challenger's scores against the champion's), since the challenger's current version was swapped in.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from batchserve import compare, predictions, scoring
from batchserve.errors import ModelError
from batchserve.online.slots import Served, Slots

__all__ = ["OnlineShadow"]

log = logging.getLogger("batchserve.serve")
_WARN_EVERY = 60.0


class OnlineShadow:
    """The challenger beside the served model, and how the two compare."""

    def __init__(self, slots: Slots, champion: scoring.FeaturePlan) -> None:
        self.slots = slots
        self.champion = champion
        self._comparisons: dict[str, compare.Comparison] = {}
        self._version: str | None = None
        self._lock = threading.Lock()
        self._warned = 0.0
        self.failures = 0

    def check(self) -> None:
        """Refuse at startup a challenger that needs a feature the champion's requests do not carry."""
        missing = [f for f in self.slots.current.plan.features if f not in self.champion.features]
        if missing:
            raise ModelError(f"the challenger needs feature(s) {', '.join(missing)} that the served model's "
                             f"requests do not carry ({', '.join(self.champion.features)})")

    def _feeds(self, served: Served, feeds: Mapping[str, np.ndarray], rows: int) -> Mapping[str, np.ndarray]:
        if served.plan.bindings == self.champion.bindings:
            return feeds  # the same arrays, as the batch challenger reuses the champion's
        columns = {}
        for b in self.champion.bindings:  # one column per feature, then the challenger's own mapping
            x = feeds[b.input_name].reshape(rows, -1)
            for j, name in enumerate(b.columns):
                columns[name] = predictions.numeric_array(np.ascontiguousarray(x[:, j]))
        batch = pa.RecordBatch.from_arrays([columns[f] for f in served.plan.features], names=list(served.plan.features))
        return scoring.batch_to_feeds(batch, served.plan)

    def score(self, feeds: Mapping[str, np.ndarray], rows: int, champion: Mapping[str, pa.Array],
              ) -> tuple[str | None, dict[str, pa.Array] | None]:
        """The challenger's version and prediction columns for these rows (None after a failure)."""
        served = self.slots.current
        try:
            preds = served.run(self._feeds(served, feeds, rows), rows)
            columns = {k: predictions.prediction_to_arrow(p) for k, p in preds.items()}
        except Exception as exc:  # noqa: BLE001 - a challenger's failure is counted and logged, never answered
            self.failures += 1
            now = time.monotonic()
            if now - self._warned >= _WARN_EVERY:
                self._warned = now
                log.warning("challenger %s version %s failed on %d row(s): %s", self.slots.name, served.version,
                            rows, " ".join(str(exc).split())[:300], extra={"fields": {"event": "shadow_failed"}})
            return served.version, None
        part = compare.compare_batch(champion, columns)
        with self._lock:
            if served.version != self._version:
                self._version, self._comparisons = served.version, {}
            self._comparisons = compare.merge_comparisons([self._comparisons, part])
        return served.version, columns

    def section(self) -> dict[str, Any]:
        with self._lock:
            comparisons, version = dict(self._comparisons), self._version
        columns = compare.section_columns(comparisons)
        return {"model": self.slots.name, "version": version, "failures": self.failures,
                "columns": {k: {f: getattr(c, f) for f in ("rows", "mean_abs_diff", "max_abs_diff", "agreement", "psi")}
                            for k, c in columns.items()}}
