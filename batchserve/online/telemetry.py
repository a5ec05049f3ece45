"""The server's Prometheus metrics and access log lines.

Each app has its own registry (two apps in one process, as in tests or a team's ASGI server, never
share counters). Labels are bounded: the endpoint is the route's name, never the raw path, so a
scanner probing a thousand URLs adds no series.
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

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

    def observe(self, rows: int, requests: int, seconds: float) -> None:
        self.batch_rows.observe(rows)
        self.batch_requests.observe(requests)
        self.inference.observe(seconds)
        self.rows.inc(rows)

    def served(self, name: str, version: str | None, alias: str | None, sha256: str) -> None:
        self.model.info({"name": name, "version": version or "", "alias": alias or "", "sha256": sha256[:12]})

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
