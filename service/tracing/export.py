"""The SDK's set-up, from the standard variables alone: ``OTEL_TRACES_EXPORTER`` (otlp, console),
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT`` (OTLP over HTTP and
protobuf, the one protocol installed), ``OTEL_SERVICE_NAME`` (``tryon`` when unset),
``OTEL_TRACES_SAMPLER`` / ``_ARG``, ``OTEL_BSP_*`` for the batch processor.

Export runs in the batch processor's thread, never in a request: a queue of at most
``OTEL_BSP_MAX_QUEUE_SIZE`` spans, and what it drops (queue full, or an export that failed:
the collector unreachable, slow or refusing) is counted in ``tryon_trace_spans_dropped_total``
by reason. The queue-full count reads the SDK's private queue, hence the pin of
opentelemetry-sdk to one minor version (pyproject.toml).
"""
from __future__ import annotations

import logging
import os
import threading

from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter, SpanExportResult

log = logging.getLogger("service.tracing")
DEFAULT_SERVICE_NAME = "tryon"
# At shutdown, how long queued spans may take to go out before the exports still trying are cut
# short (the SDK's own shutdown waits up to 30 s per processor, retrying an unreachable collector).
SHUTDOWN_FLUSH_S = 5.0
_counted: list = []  # the Metrics objects whose trace_spans_dropped counts this process's drops
_provider: TracerProvider | None = None
_exporters: list[CountingExporter] = []


def count_drops_in(metrics) -> None:
    if metrics is not None and metrics not in _counted:
        _counted.append(metrics)


def _dropped(reason: str, count: int) -> None:
    for metrics in _counted:
        metrics.trace_spans_dropped.labels(reason).inc(count)


class CountingExporter(SpanExporter):
    """The exporter, with the spans of every export that failed counted as dropped."""

    def __init__(self, exporter: SpanExporter):
        self.exporter = exporter

    def export(self, spans) -> SpanExportResult:
        try:
            result = self.exporter.export(spans)
        except Exception:  # the processor's thread must outlive any one export
            log.exception("exporting %d spans failed", len(spans))
            result = SpanExportResult.FAILURE
        if result is not SpanExportResult.SUCCESS:
            _dropped("export_failed", len(spans))
        return result

    def shutdown(self) -> None:
        self.exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.exporter.force_flush(timeout_millis)


class CountingBatchProcessor(BatchSpanProcessor):
    """BatchSpanProcessor, with a span that finds the queue full counted (the SDK only logs it)."""

    def on_end(self, span) -> None:
        queue = self._batch_processor._queue  # private: the SDK is pinned to its minor version
        if len(queue) >= queue.maxlen and span.context.trace_flags.sampled:  # the cheap test first, every span
            _dropped("queue_full", 1)
        super().on_end(span)


def _exporter(name: str) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    if name == "otlp":
        protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                                  os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"))
        if protocol != "http/protobuf":
            log.warning("OTEL_EXPORTER_OTLP_PROTOCOL=%s is not installed; exporting OTLP over http/protobuf",
                        protocol)
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: PLC0415
        return OTLPSpanExporter()
    raise ValueError(f"OTEL_TRACES_EXPORTER: unknown exporter {name!r} (otlp, console or none)")


def install(names: list[str], metrics) -> None:
    """The tracer provider of this process, one batch processor per exporter named."""
    global _provider
    resource = Resource.create()
    if resource.attributes.get(SERVICE_NAME, "").startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    # The sampler from OTEL_TRACES_SAMPLER / _ARG; shut down by shutdown(), within SHUTDOWN_FLUSH_S.
    _provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    for name in dict.fromkeys(names):
        _exporters.append(CountingExporter(_exporter(name)))
        _provider.add_span_processor(CountingBatchProcessor(_exporters[-1]))
    # Not made the global provider: libraries that trace on their own once one is set (FastAPI's
    # native telemetry, from 0.165) would add spans of their own around ours.
    count_drops_in(metrics)
    log.info("tracing on", extra={"exporters": names, "service_name": resource.attributes.get(SERVICE_NAME)})


def tracer():
    return _provider.get_tracer("service")


def shutdown() -> None:
    """The queued spans exported, for at most SHUTDOWN_FLUSH_S; then what is left is dropped."""
    if _provider is None:
        return
    flushing = threading.Thread(target=_provider.shutdown, name="tryon-trace-flush", daemon=True)
    flushing.start()
    flushing.join(SHUTDOWN_FLUSH_S)
    if flushing.is_alive():  # still retrying: its exports now fail at once, counted as dropped
        for exporter in _exporters:
            exporter.shutdown()
        flushing.join(SHUTDOWN_FLUSH_S)
