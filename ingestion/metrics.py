"""Prometheus metrics of ingestion and the points worker (served at ``/metrics``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS = Counter(
    "tanhui_ingest_events_total", "Events received, by outcome and rejection code",
    ["outcome", "code"],
)
BATCHES = Counter("tanhui_ingest_batches_total", "Batches answered, by result", ["result"])
PUBLISH_SECONDS = Histogram(
    "tanhui_ingest_publish_seconds", "Time for the bus to acknowledge a request's events",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
BUS_LAG = Gauge("tanhui_bus_lag_messages", "Messages published but not yet committed", ["topic"])
WORKER_BATCH_EVENTS = Histogram(
    "tanhui_worker_batch_events", "Events per worker batch",
    buckets=(1, 10, 100, 500, 1000, 2000, 5000, 10000, 20000, 50000),
)
WORKER_BATCH_SECONDS = Histogram(
    "tanhui_worker_batch_seconds", "Time to credit one worker batch (one transaction)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
WORKER_CREDITED = Counter(
    "tanhui_worker_events_total", "Events the worker processed, by result", ["result"]
)
DEAD_LETTERS = Counter(
    "tanhui_dead_letters_total", "Events sent to the dead-letter table, by reason", ["reason"]
)
WORKER_RETRIES = Counter("tanhui_worker_retries_total", "Batches retried after an error")
