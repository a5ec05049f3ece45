"""The server's Prometheus metrics and access log lines.

Each app has its own registry (two apps in one process, as in tests or a team's ASGI server, never
share counters). Labels are bounded: the endpoint is the route's name, never the raw path, so a
scanner probing a thousand URLs adds no series.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from batchserve.online.batcher import BatchStats

__all__ = ["Telemetry", "access_log"]

log = logging.getLogger("batchserve.serve")
access_log = logging.getLogger("batchserve.serve.access")

_LATENCY = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384, 65536)


class Telemetry(BatchStats):
    """Every metric the server keeps; ``/metrics`` renders them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("batchserve_serve_requests", "Requests answered, by endpoint and HTTP status.",
                                ["endpoint", "status"], registry=r)
        self.latency = Histogram("batchserve_serve_request_seconds", "Time from request to response, by endpoint.",
                                 ["endpoint"], buckets=_LATENCY, registry=r)
        self.batch_rows = Histogram("batchserve_serve_batch_rows", "Rows per inference call (dynamic batching).",
                                    buckets=_ROWS, registry=r)
        self.batch_requests = Histogram("batchserve_serve_batch_requests", "Requests merged into one inference call.",
                                        buckets=_ROWS[:10], registry=r)
        self.inference = Histogram("batchserve_serve_inference_seconds", "Seconds per inference call.",
                                   buckets=_LATENCY, registry=r)
        self.queue_rows = Gauge("batchserve_serve_queue_rows", "Rows waiting for the model.", registry=r)
        self.model = Info("batchserve_serve_model", "The model version being served.", registry=r)
        self.loaded = Gauge("batchserve_serve_loaded_models", "Model sessions in memory (two only during a swap).",
                            registry=r)
        self.reloads = Counter("batchserve_serve_reloads", "Model versions swapped in after the alias moved.",
                               registry=r)
        self.reload_failures = Counter("batchserve_serve_reload_failures",
                                       "New versions that failed to load or check (the old one kept serving).",
                                       registry=r)
        self.rows = Counter("batchserve_serve_rows", "Rows scored.", registry=r)
        self.precomputed_rows = Gauge("batchserve_serve_precomputed_keys", "Keys of the nightly run being served.",
                                      registry=r)
        self.precomputed_lookups = Counter("batchserve_serve_precomputed_requests",
                                           "Requests carrying a key, by where the answer came from.", ["source"],
                                           registry=r)
        self.precomputed_mismatch = Gauge("batchserve_serve_precomputed_version_mismatch",
                                          "1 when the nightly run was scored by another model version than the "
                                          "one answering online.", registry=r)
        self.precomputed_reloads = Counter("batchserve_serve_precomputed_reloads", "Newer nightly runs swapped in.",
                                           registry=r)
        self.tap_dropped = Counter("batchserve_serve_tap_dropped_rows",
                                   "Rows answered but dropped before the challenger, live drift and the request log "
                                   "saw them (the after-answer queue was full).", registry=r)
        self.shadow_skipped = Counter("batchserve_serve_shadow_skipped_rows",
                                      "Answered rows the challenger did not score: past --shadow-budget.", registry=r)
        self.log_rows = Counter("batchserve_serve_log_rows", "Rows written to the request log.", registry=r)
        self.log_files = Counter("batchserve_serve_log_files", "Request log files committed.", registry=r)
        self.log_failures = Counter("batchserve_serve_log_write_failures",
                                    "Request log flushes the store refused (the rows wait for the next).", registry=r)
        self.log_dropped = Counter("batchserve_serve_log_dropped_rows",
                                   "Request log rows dropped unwritten (the buffer was full, or the server stopped "
                                   "before the store took them).", registry=r)

    def observe(self, rows: int, requests: int, seconds: float) -> None:
        self.batch_rows.observe(rows)
        self.batch_requests.observe(requests)
        self.inference.observe(seconds)
        self.rows.inc(rows)

    def served(self, name: str, version: str | None, alias: str | None, sha256: str) -> None:
        self.model.info({"name": name, "version": version or "", "alias": alias or "", "sha256": sha256[:12]})

    def watch(self, sections: Callable[[], dict[str, Any]]) -> None:
        """Live drift and shadow agreement as gauges, computed when scraped (``sections`` returns the
        drift endpoint's document)."""
        self.registry.register(_SectionCollector(sections))

    def render(self) -> bytes:
        return generate_latest(self.registry)


def log_request(fields: dict[str, Any]) -> None:
    """One access line: method, path, status, milliseconds, rows, the version that answered, request id."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    version = fields.get("version")
    access_log.info(
        "%s %s %s %.2fms rows=%s version=%s request_id=%s", fields["method"], fields["path"], fields["status"],
        fields["ms"], fields.get("rows", 0), version if version is not None else "-", fields["request_id"],
        extra={"fields": {"event": "request", **fields}},
    )


_DRIFT_METRICS = ("psi", "js", "ks", "wasserstein")
_AGREEMENT = ("mean_abs_diff", "max_abs_diff", "agreement", "psi")


class _SectionCollector(Collector):
    def __init__(self, sections: Callable[[], dict[str, Any]]) -> None:
        self._sections = sections

    def collect(self) -> Iterator[GaugeMetricFamily]:
        doc = self._sections()
        live = doc.get("drift")
        if live is not None:
            metric = GaugeMetricFamily("batchserve_serve_drift", "Live drift of a column against the reference, "
                                       "over the window, by metric.", labels=["column", "role", "metric"])
            flag = GaugeMetricFamily("batchserve_serve_drifted", "1 when the column drifted past its threshold.",
                                     labels=["column", "role"])
            for role in ("features", "predictions"):
                for name, col in live["drift"][role].items():
                    for m in _DRIFT_METRICS:
                        if col.get(m) is not None:
                            metric.add_metric([name, role[:-1], m], float(col[m]))
                    flag.add_metric([name, role[:-1]], 1.0 if col.get("drifted") else 0.0)
            yield metric
            yield flag
            yield GaugeMetricFamily("batchserve_serve_drift_window_rows", "Rows in the live drift window.",
                                    value=float(live["rows"]))
            yield GaugeMetricFamily("batchserve_serve_drifted_features", "Features drifted in the window.",
                                    value=float(len(live["drift"]["drifted_features"])))
            yield GaugeMetricFamily("batchserve_serve_drifted_predictions", "Prediction columns drifted in the window.",
                                    value=float(len(live["drift"]["drifted_predictions"])))
        shadow = doc.get("challenger")
        if shadow is not None:
            agree = GaugeMetricFamily("batchserve_serve_shadow", "Champion vs challenger on live traffic, by "
                                      "prediction column (as the batch challenger section).",
                                      labels=["column", "measure"])
            for name, col in shadow["columns"].items():
                for m in _AGREEMENT:
                    if col.get(m) is not None:
                        agree.add_metric([name, m], float(col[m]))
            yield agree
            yield GaugeMetricFamily("batchserve_serve_shadow_failures", "Batches the challenger failed on.",
                                    value=float(shadow["failures"]))
