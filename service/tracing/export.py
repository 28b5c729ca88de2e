"""The set-up, from the standard variables alone: ``OTEL_TRACES_EXPORTER`` (otlp, console),
``OTEL_EXPORTER_OTLP_TRACES_*`` / ``OTEL_EXPORTER_OTLP_*`` (OTLP over HTTP and protobuf, the one
protocol installed: endpoint, headers, timeout, compression, certificates, as the SDK's exporter
reads them), ``OTEL_SERVICE_NAME`` (``tryon`` when unset) and ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_TRACES_SAMPLER`` / ``_ARG``, and ``OTEL_BSP_SCHEDULE_DELAY``, ``OTEL_BSP_MAX_QUEUE_SIZE``,
``OTEL_BSP_MAX_EXPORT_BATCH_SIZE`` for the export queue.

Export runs in the queue's thread, never in a request. The queue holds at most
``OTEL_BSP_MAX_QUEUE_SIZE`` spans. What it drops is counted in ``tryon_trace_spans_dropped_total``
by reason: a span that finds the queue full, and the spans of an export that failed (the
collector unreachable, slow or refusing).

``SpanQueue`` stands where the SDK's BatchSpanProcessor would, doing the same job for this
recorder's spans (the processor's ``on_end`` expects the SDK's). ``otlp`` is the SDK's exporter
with the request written by service/tracing/otlp.py (why: there); ``console`` is the SDK's.
"""
from __future__ import annotations

import collections
import logging
import os
import threading

from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from . import otlp

log = logging.getLogger("service.tracing")
DEFAULT_SERVICE_NAME = "tryon"
SCOPE = "service"  # the instrumentation scope of every span
# At shutdown, how long queued spans may take to go out before the exports still trying are cut
# short (the SDK's exporter retries an unreachable collector for up to its timeout, 10 s by default).
SHUTDOWN_FLUSH_S = 5.0
# OTEL_BSP_* defaults, as the specification gives them.
BSP_DEFAULTS = {"OTEL_BSP_SCHEDULE_DELAY": 5000, "OTEL_BSP_MAX_QUEUE_SIZE": 2048, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": 512}
_counted: list = []  # the Metrics objects whose trace_spans_dropped counts this process's drops
_queue: SpanQueue | None = None


def count_drops_in(metrics) -> None:
    if metrics is not None and metrics not in _counted:
        _counted.append(metrics)


def _dropped(reason: str, count: int) -> None:
    for metrics in _counted:
        metrics.trace_spans_dropped.labels(reason).inc(count)


class OtlpExporter(SpanExporter):
    """OTLP over HTTP and protobuf: the request written by service/tracing/otlp.py, sent by the
    SDK's exporter's client (its endpoint, headers, timeout, compression, certificates and
    retries, from the OTEL_EXPORTER_OTLP_* variables)."""

    def __init__(self, resource: Resource):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: PLC0415
        self.sdk = OTLPSpanExporter()
        self.encoder = otlp.Encoder(resource, SCOPE)

    def export(self, spans) -> SpanExportResult:
        sent = self.sdk._client.export(self.encoder.request(spans))  # private: the SDK is pinned to its minor version
        return SpanExportResult.SUCCESS if sent.success else SpanExportResult.FAILURE

    def shutdown(self) -> None:
        self.sdk.shutdown()


class CountingExporter(SpanExporter):
    """The exporter, with the spans of every export that failed counted as dropped."""

    def __init__(self, exporter: SpanExporter):
        self.exporter = exporter

    def export(self, spans) -> SpanExportResult:
        try:
            result = self.exporter.export(spans)
        except Exception:  # the queue's thread must outlive any one export
            log.exception("exporting %d spans failed", len(spans))
            result = SpanExportResult.FAILURE
        if result is not SpanExportResult.SUCCESS:
            _dropped("export_failed", len(spans))
        return result

    def shutdown(self) -> None:
        self.exporter.shutdown()


def _positive(name: str) -> int:
    raw = os.environ.get(name, "").strip()
    if raw:
        try:
            if int(raw) > 0:
                return int(raw)
        except ValueError:
            pass
        log.warning("%s=%r is not a positive integer; using %d", name, raw, BSP_DEFAULTS[name])
    return BSP_DEFAULTS[name]


class SpanQueue:
    """Ended spans on their way to the exporters: ``put`` (any thread) appends to a bounded deque,
    and one thread takes them off in batches of at most ``max_batch``, every ``delay_s``, or as
    soon as a batch is full."""

    def __init__(self, exporters: list[CountingExporter]):
        self.exporters = exporters
        self.delay_s = _positive("OTEL_BSP_SCHEDULE_DELAY") / 1000
        self.max_queue = _positive("OTEL_BSP_MAX_QUEUE_SIZE")
        self.max_batch = min(_positive("OTEL_BSP_MAX_EXPORT_BATCH_SIZE"), self.max_queue)
        self._spans: collections.deque = collections.deque()
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="tryon-trace-export", daemon=True)
        self._thread.start()

    def put(self, span) -> None:
        spans = self._spans
        if len(spans) >= self.max_queue:
            _dropped("queue_full", 1)
            return
        spans.append(span)
        if len(spans) >= self.max_batch and not self._wake.is_set():
            self._wake.set()

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(self.delay_s)
            self._wake.clear()
            self._export(everything=False)
        self._export(everything=True)  # what was queued by the time of stop()

    def _export(self, everything: bool) -> None:
        """One batch, then more only while they are full (or ``everything``): a request sent for
        every few spans that arrived during the last would cost about 1 ms of CPU each."""
        batches = 0
        while self._spans and (everything or not batches or len(self._spans) >= self.max_batch):
            batches += 1
            batch = [self._spans.popleft() for _ in range(min(self.max_batch, len(self._spans)))]
            for exporter in self.exporters:
                exporter.export(batch)

    def stop(self, timeout_s: float) -> None:
        """What is queued exported, for at most ``timeout_s``; then the exporters shut down (an
        export still retrying fails at once, counted as dropped)."""
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout_s)
        for exporter in self.exporters:
            exporter.shutdown()
        self._thread.join(timeout_s)


def _exporter(name: str, resource: Resource) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    if name == "otlp":
        protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                                  os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"))
        if protocol != "http/protobuf":
            log.warning("OTEL_EXPORTER_OTLP_PROTOCOL=%s is not installed; exporting OTLP over http/protobuf",
                        protocol)
        return OtlpExporter(resource)
    raise ValueError(f"OTEL_TRACES_EXPORTER: unknown exporter {name!r} (otlp, console or none)")


def install(names: list[str], metrics) -> tuple:
    """This process's export queue, one exporter per name; returns what its spans need
    (service/tracing/spans.setup): the sampler, the queue's ``put``, the resource and the scope."""
    global _queue
    resource = Resource.create()
    if resource.attributes.get(SERVICE_NAME, "").startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    exporters = [CountingExporter(_exporter(name, resource)) for name in dict.fromkeys(names)]
    # The provider is made for the sampler it picks from OTEL_TRACES_SAMPLER / _ARG, and used for
    # nothing else: not made the global provider either, since libraries that trace on their own
    # once one is set (FastAPI's native telemetry, from 0.165) would add spans of their own.
    sampler = TracerProvider(resource=resource, shutdown_on_exit=False).sampler
    _queue = SpanQueue(exporters)
    count_drops_in(metrics)
    log.info("tracing on", extra={"exporters": names, "service_name": resource.attributes.get(SERVICE_NAME)})
    return sampler, _queue.put, resource, InstrumentationScope(SCOPE)


def shutdown() -> None:
    """The queued spans exported, for at most SHUTDOWN_FLUSH_S; then what is left is dropped."""
    if _queue is not None:
        _queue.stop(SHUTDOWN_FLUSH_S)
