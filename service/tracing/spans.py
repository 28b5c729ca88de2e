"""The spans: imported by service/tracing/__init__.py only once tracing is on, and ``setup`` with
what service/tracing/export.py made (the sampler, the export queue, the resource).

A span here is one slotted object, made current in a ContextVar of this module and queued for
export as it ends; OpenTelemetry supplies the data model (what OTLP's encoder reads off a span:
``SpanKind``, ``Status``, the resource, the instrumentation scope), the sampler from
``OTEL_TRACES_SAMPLER`` / ``_ARG`` and the W3C propagator. Not the SDK's Tracer and Span, for
the measured reason: at 100% sampling they cost the front end 0.52-0.66 ms of CPU a request of
4.9 spans (bench/tracing.py, 2026-12-05 12:31 UTC), and this recorder with service/tracing/otlp.py
0.08-0.18 ms (18:51 and 19:04 UTC; the issue's target is 0.3). Each of the SDK's spans takes locks,
BoundedList and BoundedAttributes, a sampler call and a ReadableSpan copy on its way to the
queue. This one samples once per trace (a root, or a caller's parent: a local child takes its
parent's decision, as ParentBased does and as every trace-id-based sampler decides alike), and
an unsampled span is never queued.
"""
from __future__ import annotations

import random
import time
import traceback
from contextvars import ContextVar
from typing import Mapping

from opentelemetry import context as otel_context, trace
from opentelemetry.sdk.trace import Event
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_w3c = TraceContextTextMapPropagator()  # traceparent and tracestate, whatever OTEL_PROPAGATORS says
_sampler = None  # from setup(), as are
_finished = None  # a sampled span's way to the exporters, as it ends
_ERROR = Status(StatusCode.ERROR)
_NO_PARENT = otel_context.Context()  # what the sampler gets for a root: not whatever is current
_random_bits = random.getrandbits


class Remote:
    """A caller's span (from a W3C ``traceparent``: a request's header, a wire message's trace
    field), the parent of the span made under it."""

    __slots__ = ("trace_id", "span_id", "trace_state", "sampled", "context")
    is_remote = True

    def __init__(self, context: otel_context.Context, span_context):
        self.context = context  # for the sampler (ParentBased reads the parent from it)
        self.trace_id, self.span_id = span_context.trace_id, span_context.span_id
        self.trace_state, self.sampled = span_context.trace_state, span_context.trace_flags.sampled

    @staticmethod
    def parse(carrier: Mapping[str, str]) -> "Remote | None":
        """The caller's span in ``carrier``; None when there is none or it is malformed."""
        context = _w3c.extract(carrier)
        span_context = trace.get_current_span(context).get_span_context()
        return Remote(context, span_context) if span_context.is_valid else None


_current: ContextVar["Span | Remote | None"] = ContextVar("tryon_trace_span", default=None)


class Link:
    """A batch's link to a request it serves, as OTLP's encoder reads it."""

    __slots__ = ("context",)
    attributes = None
    dropped_attributes = 0

    def __init__(self, context: "Span | Remote"):
        self.context = context


class Span:
    """One span, current for its ``with`` block and ended as the block ends (an exception leaving
    the block recorded as an event, the span's status then ERROR, as the SDK's tracer does).
    Its fields are those OTLP's encoder reads off the SDK's ReadableSpan; ``resource`` and
    ``instrumentation_scope`` are this process's, given to ``setup``."""

    __slots__ = ("name", "trace_id", "span_id", "trace_state", "sampled", "parent", "start_time", "end_time",
                 "attributes", "links", "events", "status", "_token")
    kind = SpanKind.INTERNAL
    is_remote = False
    resource = None
    instrumentation_scope = None
    dropped_attributes = dropped_events = dropped_links = 0

    def __init__(self, name: str, parent: "Span | Remote | None", attributes: dict, links: tuple = (),
                 start_time: int | None = None):
        self.name, self.parent, self.attributes, self.links = name, parent, attributes, links
        self.events, self.status = None, None
        self.span_id = _random_bits(64) or 1
        if parent is not None and not parent.is_remote:  # the common case: a child of this process's span
            self.trace_id, self.trace_state, self.sampled = parent.trace_id, parent.trace_state, parent.sampled
        else:
            self.trace_id = parent.trace_id if parent is not None else _random_bits(128) or 1
            decided = _sampler.should_sample(parent.context if parent is not None else _NO_PARENT,
                                             self.trace_id, name, self.kind, attributes or None, links)
            self.sampled, self.trace_state = decided.decision.is_sampled(), decided.trace_state
            if decided.attributes:
                self.attributes = {**attributes, **decided.attributes}
        self.start_time = start_time or time.time_ns()

    def get_span_context(self) -> "Span":
        return self

    def __enter__(self) -> "Span":
        self._token = _current.set(self)
        return self

    def __exit__(self, error_type, error, stack) -> None:
        try:
            _current.reset(self._token)
        except (ValueError, RuntimeError):  # left in another context than it was entered in: that one goes on
            pass
        if isinstance(error, Exception):  # as the SDK: not a cancellation or an exit
            self.events = [Event("exception", {
                "exception.type": error_type.__name__, "exception.message": str(error),
                "exception.stacktrace": "".join(traceback.format_exception(error_type, error, stack))})]
            self.status = Status(StatusCode.ERROR, f"{error_type.__name__}: {error}")
        self.end()

    def end(self, end_time: int | None = None) -> None:
        self.end_time = end_time or time.time_ns()
        if self.sampled:
            _finished(self)

    def to_json(self, indent: int | None = 4) -> str:
        """The SDK's JSON of a span (ConsoleSpanExporter prints it)."""
        from opentelemetry.sdk.trace import ReadableSpan  # noqa: PLC0415  (the console exporter only)
        from opentelemetry.trace import SpanContext, TraceFlags  # noqa: PLC0415

        def context(span):
            return SpanContext(span.trace_id, span.span_id, span.is_remote, TraceFlags(int(span.sampled)),
                               span.trace_state)
        return ReadableSpan(self.name, context(self), self.parent and context(self.parent), self.resource,
                            self.attributes, self.events or (), self.links, self.kind,
                            status=self.status or Status(), start_time=self.start_time, end_time=self.end_time,
                            instrumentation_scope=self.instrumentation_scope).to_json(indent)


class ServerSpan(Span):
    __slots__ = ()
    kind = SpanKind.SERVER


def setup(sampler, finished, resource, scope) -> None:
    global _sampler, _finished
    _sampler, _finished = sampler, finished
    Span.resource, Span.instrumentation_scope = resource, scope


def span(name: str, attributes: dict) -> Span:
    return Span(name, _current.get(), attributes)


def request(name: str, headers: Mapping[str, str], attributes: dict) -> ServerSpan:
    parent = None  # no traceparent (most calls): a trace of its own, nothing to parse
    if "traceparent" in headers:  # (gRPC's metadata holds every key the call sent)
        try:
            parent = Remote.parse(headers)
        except Exception:  # a caller's header never fails its request: it starts a trace of its own
            pass
    return ServerSpan(name, parent, attributes)


def finish_request(span: Span, name: str, status: int, attributes: dict) -> None:
    span.name = name
    span.attributes = {**span.attributes, "http.response.status_code": status, **attributes}
    if status >= 500:
        span.status = _ERROR


def current() -> "Span | Remote | None":
    return _current.get()


class attached:
    """The caller's span in ``carrier`` current for the block (the engine process's submit)."""

    __slots__ = ("parent", "_token")

    def __init__(self, carrier: Mapping[str, str]):
        self.parent = Remote.parse(carrier)

    def __enter__(self) -> None:
        self._token = _current.set(self.parent)

    def __exit__(self, *exc) -> None:
        _current.reset(self._token)


def carrier() -> dict[str, str]:
    span = _current.get()
    if span is None:
        return {}
    fields = {"traceparent": f"00-{span.trace_id:032x}-{span.span_id:016x}-{'01' if span.sampled else '00'}"}
    if span.trace_state:
        fields["tracestate"] = span.trace_state.to_header()
    return fields


class batch:
    """Each job's wait as a ``queue`` span in its trace (measured on perf_counter, as the queue
    metrics are, and placed on the wall clock spans use); then the batch's span, a root of its
    own (not whatever is current in the worker) linked to every request it serves, current for
    the block."""

    __slots__ = ("span",)

    def __init__(self, jobs: list, queued: bool):
        now_ns, now = time.time_ns(), time.perf_counter()
        links = []
        for job in jobs:
            if job.trace is None:
                continue
            links.append(Link(job.trace))
            if queued:
                Span("queue", job.trace, {}, start_time=now_ns - int((now - job.enqueued_at) * 1e9)).end(now_ns)
        self.span = Span("batch", None, {"tryon.batch_size": len(jobs)}, tuple(links))

    def __enter__(self) -> Span:
        return self.span.__enter__()

    def __exit__(self, *exc) -> None:
        self.span.__exit__(*exc)


def log_fields() -> dict[str, str]:
    span = _current.get()
    if span is None:
        return {}
    return {"trace_id": format(span.trace_id, "032x"), "span_id": format(span.span_id, "016x")}
