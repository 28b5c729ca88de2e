"""Prometheus metrics, one registry per app (two apps in a process never clash).

The names marked "Triton:" mean what the NVIDIA Triton metric named beside
them means (service/README.md has the table), in seconds rather than
microseconds and as histograms rather than running sums.

With TRYON_WORKERS > 1 every process (the engine's and each front end's) writes its
values to files in PROMETHEUS_MULTIPROC_DIR, and /metrics sums them: requests from
every front end, batch sizes as the engine process formed them.
"""
from __future__ import annotations

import os

import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client import CONTENT_TYPE_LATEST  # noqa: F401  (re-exported for the route)

# The *_created series only double the output; dashboards use the counters themselves.
disable_created_metrics()

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60)
# Queue waits and cache hits take milliseconds: finer at the low end.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, *LATENCY_BUCKETS)
DETECTION_BUCKETS = (0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5)


class ReportedElsewhere:
    """In place of a gauge that another process owns: a front end's queue depth is the engine's."""

    def set(self, value: float) -> None:
        pass


class Metrics:
    def __init__(self, max_batch_size: int):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("tryon_http_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("tryon_http_request_duration_seconds", "HTTP request latency by route",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("tryon_queue_depth", "Requests waiting for the model worker", registry=r,
                                 multiprocess_mode="livemostrecent")
        self.pending = Gauge("tryon_queue_pending", "Requests waiting for the model worker by priority",
                             ["priority"], registry=r, multiprocess_mode="livemostrecent")
        self.batch_size = Histogram("tryon_batch_size", "Requests per batch run through the engine",
                                    buckets=tuple(range(1, max_batch_size + 1)), registry=r)
        self.inference = Histogram("tryon_inference_seconds", "Engine time per batch",
                                   buckets=LATENCY_BUCKETS, registry=r)
        self.detection = Histogram("tryon_person_detection_seconds", "Time to find the person's keypoints in a "
                                   "photo sent without them", buckets=DETECTION_BUCKETS, registry=r)
        self.rejected = Counter("tryon_rejected", "Error answers of the /v1 endpoints and the v2 infer by reason (error code)",
                                ["reason"], registry=r)
        self.dropped = Counter("tryon_dropped", "Queued requests dropped before the engine ran them",
                               ["reason"], registry=r)
        self.oom_splits = Counter("tryon_oom_splits", "Batches split in two after a device out-of-memory",
                                  registry=r)
        self.sampler = Gauge("tryon_sampler", "1 for the deformable-sampling implementation serving "
                             "(after the warm-up check of the fused kernels)", ["sampler"], registry=r)
        self.ready = Gauge("tryon_ready", "1 when loaded, warm and not draining", registry=r,
                           multiprocess_mode="livemin")
        self.healthy = Gauge("tryon_healthy", "0 once the device failed and the process is being replaced",
                             registry=r, multiprocess_mode="livemin")
        self.healthy.set(1)
        # service/api/components.py; with TRYON_WORKERS > 1 the lowest of the processes' values.
        self.component_available = Gauge("tryon_component_available", "1 when a component (weights, sampler, "
                                         "person_detector, cache, jobs_store) works, 0 while it loads or once "
                                         "it failed (/readyz says why)", ["component"], registry=r,
                                         multiprocess_mode="livemin")

        # Triton: nv_inference_request_success / _failure / _request_duration_us (per try-on request;
        # a cache hit is a success).
        self.request_success = Counter("tryon_request_success", "Try-on requests answered successfully "
                                       "(cache hits included)", ["route"], registry=r)
        self.request_failure = Counter("tryon_request_failure", "Try-on requests that failed, by reason "
                                       "(error code)", ["route", "reason"], registry=r)
        self.request_duration = Histogram("tryon_request_duration_seconds", "Whole successful try-on requests, "
                                          "arrival to last byte", ["route"], buckets=DURATION_BUCKETS, registry=r)
        # Triton: nv_inference_count / nv_inference_exec_count (cache hits are in neither).
        self.inference_count = Counter("tryon_inference_count", "Items run through the engine (a request, "
                                       "or one garment of a batch request)", registry=r)
        self.exec_count = Counter("tryon_inference_exec_count", "Engine executions (batches and garment chunks); "
                                  "inference_count / exec_count is the average batch size", registry=r)
        # Triton: nv_inference_queue_duration_us / nv_inference_compute_infer_duration_us.
        self.queue_duration = Histogram("tryon_queue_duration_seconds", "Time a request waited in the queue "
                                        "before the engine took it", buckets=DURATION_BUCKETS, registry=r)
        self.compute_duration = Histogram("tryon_compute_infer_duration_seconds", "Engine time per request and "
                                          "execution (a batch's time counts for each request in it)",
                                          buckets=DURATION_BUCKETS, registry=r)
        # Triton: nv_cache_num_hits_per_model / nv_cache_num_misses_per_model.
        self.cache_hits = Counter("tryon_cache_hits", "Response cache look-ups that found the answer",
                                  ["route"], registry=r)
        self.cache_misses = Counter("tryon_cache_misses", "Response cache look-ups that did not (the store "
                                    "failing included)", ["route"], registry=r)
        self.cache_hit_ratio = Gauge("tryon_cache_hit_ratio", "Hits / look-ups since start (0 before any)",
                                     registry=r)
        self.cache_store_errors = Counter("tryon_cache_store_errors", "Cache store operations that failed, "
                                          "timed out or were skipped after a failure; the request went on "
                                          "uncached", ["store", "operation", "reason"], registry=r)
        self.cache_bytes = Gauge("tryon_cache_bytes", "Bytes held by the in-process cache", registry=r)
        self.cache_evictions = Counter("tryon_cache_evictions", "In-process cache entries evicted to stay "
                                       "within TRYON_CACHE_BYTES", registry=r)
        # Catalog jobs (service/jobs/): submitted (status queued), started (running) and ended by status.
        self.jobs = Counter("tryon_jobs", "Catalog jobs entering each status (queued: submitted)", ["status"],
                            registry=r)
        self.job_garments = Counter("tryon_job_garments", "Garments of catalog jobs settled, by outcome",
                                    ["outcome"], registry=r)
        self.webhook_deliveries = Counter("tryon_webhook_deliveries", "Webhook delivery attempts by outcome "
                                          "(delivered, failed, gone, refused; exhausted: retries used up)",
                                          ["outcome"], registry=r)
        # service/tracing/export.py: spans the exporter dropped (its queue full, an export failed).
        self.trace_spans_dropped = Counter("tryon_trace_spans_dropped", "Trace spans dropped before reaching "
                                           "the collector, by reason (queue_full, export_failed)", ["reason"],
                                           registry=r)
        self.jobs_oldest_queued = Gauge("tryon_jobs_oldest_queued_seconds", "Age of the oldest job task no "
                                        "replica has taken yet", registry=r, multiprocess_mode="livemax")
        # Triton: nv_gpu_memory_used_bytes / nv_gpu_memory_total_bytes (only on a GPU). Set only by
        # the process that holds the engine (read_device_memory): a front end of TRYON_WORKERS > 1
        # reads them from the engine process's files, and never opens a CUDA context itself.
        self.gpu_memory_used = Gauge("tryon_gpu_memory_used_bytes", "Device memory in use (all processes)",
                                     ["device"], registry=r, multiprocess_mode="livemostrecent")
        self.gpu_memory_total = Gauge("tryon_gpu_memory_total_bytes", "Device memory", ["device"], registry=r,
                                      multiprocess_mode="livemostrecent")

    def observe_request(self, route: str, seconds: float, failure: str | None = None) -> None:
        """One try-on request of ``route`` answered, over HTTP or gRPC: a success and its duration,
        or a failure by its reason (``failure``, the error code)."""
        if failure is None:
            self.request_success.labels(route).inc()
            self.request_duration.labels(route).observe(seconds)
        else:
            self.request_failure.labels(route, failure).inc()

    def observe_execution(self, items: int, compute_s: float, queue_s: list[float]) -> None:
        """One engine execution of ``items`` items, for the requests that waited ``queue_s`` (one per
        request that left the queue with it; none for a garments ``Work``'s later chunks)."""
        self.exec_count.inc()
        self.inference_count.inc(items)
        for waited in queue_s:
            self.queue_duration.observe(waited)
        for _ in range(max(1, len(queue_s))):
            self.compute_duration.observe(compute_s)

    def refresh(self, queue_depth: int, engine_device: torch.device | None) -> None:
        """Gauges read at scrape time: the queue, the hit ratio, and the memory of the GPU of an
        engine in this process (None in a front end: its engine is in another process)."""
        self.queue_depth.set(queue_depth)
        hits = sum(s.value for s in _samples(self.cache_hits, "_total"))
        lookups = hits + sum(s.value for s in _samples(self.cache_misses, "_total"))
        self.cache_hit_ratio.set(hits / lookups if lookups else 0.0)
        if engine_device is not None:
            self.read_device_memory(engine_device)

    def read_device_memory(self, device: torch.device) -> None:
        """The GPU gauges, from the process whose engine holds the device's context (the single
        process at scrape time, the engine process of TRYON_WORKERS > 1 every few seconds);
        nothing on a CPU."""
        if device.type == "cuda":
            free, total = torch.cuda.mem_get_info(device)
            self.gpu_memory_used.labels(str(device)).set(total - free)
            self.gpu_memory_total.labels(str(device)).set(total)

    def render(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            summed = CollectorRegistry()
            MultiProcessCollector(summed)
            return generate_latest(summed)
        return generate_latest(self.registry)


def _samples(metric, suffix: str):
    return [s for family in metric.collect() for s in family.samples if s.name.endswith(suffix)]
