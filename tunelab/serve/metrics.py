"""Prometheus metrics of one server (its own registry, so several apps in one process do not collide)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("tunelab_requests", "HTTP requests by route and status", ["route", "status"], registry=r)
        self.latency = Histogram("tunelab_request_seconds", "HTTP request latency by route", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("tunelab_batch_size", "Texts per model call", ["model"], buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("tunelab_queue_depth", "Texts waiting for the model", ["model"], registry=r)
        self.monitor = Gauge("tunelab_monitor", "Latest monitored figure (drift, live accuracy, latency, errors)",
                             ["model", "metric"], registry=r)
        self.alert_firing = Gauge("tunelab_alert_firing", "1 while an alert rule fires", ["rule", "model"], registry=r)
        self.inference_seconds = Histogram("tunelab_inference_seconds", "Model time per batch", ["model"],
                                           buckets=LATENCY_BUCKETS, registry=r)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
