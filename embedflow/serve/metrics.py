"""Prometheus metrics of a server: requests, rows, batch sizes, queue depth, latencies. Each
server has its own registry (``GET /metrics``); prometheus-client comes with the serve extra.

>>> m = Metrics()
>>> m.batch(8, 0.01); b"embedflow_rows_total 8.0" in m.render()
True
"""

from __future__ import annotations

from typing import Any

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    """The server's counters, gauges and histograms."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("embedflow_requests", "HTTP requests by endpoint and status code", ["endpoint", "code"], registry=self.registry)
        self.latency = Histogram(
            "embedflow_request_seconds", "Time from request to response", ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry
        )
        self.rows = Counter("embedflow_rows", "Rows run through the pipeline", registry=self.registry)
        self.batch_rows = Histogram("embedflow_batch_rows", "Rows per shared batch", buckets=BATCH_BUCKETS, registry=self.registry)
        self.batch_seconds = Histogram("embedflow_batch_seconds", "Time to run one shared batch", buckets=LATENCY_BUCKETS, registry=self.registry)
        self.queue_rows = Gauge("embedflow_queue_rows", "Rows waiting for a batch", registry=self.registry)

    def batch(self, rows: int, seconds: float) -> None:
        self.rows.inc(rows)
        self.batch_rows.observe(rows)
        self.batch_seconds.observe(seconds)

    def request(self, endpoint: str, code: int, seconds: float) -> None:
        self.requests.labels(endpoint=endpoint, code=str(code)).inc()
        self.latency.labels(endpoint=endpoint).observe(seconds)

    def render(self) -> Any:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
