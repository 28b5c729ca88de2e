"""The spans themselves, with OpenTelemetry's API: imported by service/tracing/__init__.py only
once tracing is on (service/tracing/export.py has installed the tracer provider by then)."""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Mapping

from opentelemetry import context as otel_context, trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .export import tracer

_tracer = tracer()  # this process's provider (service/tracing/export.py has installed it)
_w3c = TraceContextTextMapPropagator()  # traceparent and tracestate, whatever OTEL_PROPAGATORS says


class Current:
    """A started span made current for a block, then ended: what the tracer's
    start_as_current_span does (an error recorded, and the span's status then ERROR), without
    its two generator-based context managers around it (several microseconds a span)."""

    __slots__ = ("span", "token")

    def __init__(self, span):
        self.span = span

    def __enter__(self):
        self.token = otel_context.attach(trace.set_span_in_context(self.span))
        return self.span

    def __exit__(self, kind, error, traceback) -> None:
        otel_context.detach(self.token)
        if isinstance(error, Exception):  # as start_as_current_span: not a cancellation or an exit
            self.span.record_exception(error)
            self.span.set_status(Status(StatusCode.ERROR, f"{kind.__name__}: {error}"))
        self.span.end()


def span(name: str, attributes: dict) -> Current:
    return Current(_tracer.start_span(name, attributes=attributes or None))


def request(name: str, headers: Mapping[str, str], attributes: dict) -> Current:
    parent = otel_context.Context()  # no traceparent (most calls): a trace of its own, nothing to parse
    if headers:
        try:
            parent = _w3c.extract(headers)
        except Exception:  # a caller's header never fails its request: it starts a trace of its own
            pass
    return Current(_tracer.start_span(name, context=parent, kind=SpanKind.SERVER, attributes=attributes or None))


def finish_request(span, name: str, status: int, attributes: dict) -> None:
    span.update_name(name)
    span.set_attributes({"http.response.status_code": status, **attributes})  # one lock taken, not one each
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR))


def current():
    return otel_context.get_current()


@contextmanager
def attached(carrier: Mapping[str, str]):
    token = otel_context.attach(_w3c.extract(carrier))
    try:
        yield
    finally:
        otel_context.detach(token)


def carrier() -> dict[str, str]:
    fields: dict[str, str] = {}
    _w3c.inject(fields)
    return fields


@contextmanager
def batch(jobs: list, queued: bool):
    now_ns, now = time.time_ns(), time.perf_counter()
    links = []
    for job in jobs:
        if job.trace is None:
            continue
        request_span = trace.get_current_span(job.trace).get_span_context()
        if request_span.is_valid:
            links.append(Link(request_span))
        if queued:
            # Measured on perf_counter (as the queue metrics are), placed on the wall clock spans use.
            waited = _tracer.start_span("queue", context=job.trace,
                                        start_time=now_ns - int((now - job.enqueued_at) * 1e9))
            waited.end(end_time=now_ns)
    # A root of its own (not whatever is current in the worker), linked to every request it serves.
    with Current(_tracer.start_span("batch", context=otel_context.Context(), links=links,
                                    attributes={"tryon.batch_size": len(jobs)})) as current:
        yield current


def log_fields() -> dict[str, str]:
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return {}
    return {"trace_id": format(context.trace_id, "032x"), "span_id": format(context.span_id, "016x")}
