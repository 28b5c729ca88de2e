"""Prometheus metrics, one registry per app (two apps in a process never clash)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST  # noqa: F401  (re-exported for the route)

# The *_created series only double the output; dashboards use the counters themselves.
disable_created_metrics()

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60)
DETECTION_BUCKETS = (0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5)


class Metrics:
    def __init__(self, max_batch_size: int):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("tryon_http_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("tryon_http_request_duration_seconds", "HTTP request latency by route",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("tryon_queue_depth", "Requests waiting for the model worker", registry=r)
        self.batch_size = Histogram("tryon_batch_size", "Requests per batch run through the engine",
                                    buckets=tuple(range(1, max_batch_size + 1)), registry=r)
        self.inference = Histogram("tryon_inference_seconds", "Engine time per batch",
                                   buckets=LATENCY_BUCKETS, registry=r)
        self.detection = Histogram("tryon_person_detection_seconds", "Time to find the person's keypoints in a "
                                   "photo sent without them", buckets=DETECTION_BUCKETS, registry=r)
        self.rejected = Counter("tryon_rejected", "Error answers of the /v1 endpoints by reason (error code)",
                                ["reason"], registry=r)
        self.dropped = Counter("tryon_dropped", "Queued requests dropped before the engine ran them",
                               ["reason"], registry=r)
        self.oom_splits = Counter("tryon_oom_splits", "Batches split in two after a device out-of-memory",
                                  registry=r)
        self.ready = Gauge("tryon_ready", "1 when loaded, warm and not draining", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
