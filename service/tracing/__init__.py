"""OpenTelemetry traces, set up only by the standard ``OTEL_*`` variables and off unless
``OTEL_TRACES_EXPORTER`` names an exporter (``otlp``, ``console``; ``none`` or unset: off).

Off costs one module-level flag: nothing of OpenTelemetry is imported (the GPU check's
environment has none of it), ``span`` hands back one shared empty context manager, and
``traced`` calls the function it wraps straight through. On, ``configure`` imports the SDK
(service/tracing/export.py) and the spans come from service/tracing/spans.py.

A trace is one request: the request's span (``request``: its caller's W3C ``traceparent``
and ``tracestate`` kept), then decode, person (detection and framing), cache, queue (the wait,
in the process that batches), encode; URL fetches and webhooks carry it on in their
``traceparent``. A batch serves many traces: its span starts a trace of its own, linked to
every request it served, and its inference span is its child. With TRYON_WORKERS > 1 the
context crosses the engine socket in the submit message (service/processes/wire.py).

This package is foundation: it imports nothing of the service's rooms (the metrics it counts
dropped spans in are handed to ``configure``).
"""
from __future__ import annotations

import functools
import inspect
import logging
import os
from contextlib import nullcontext
from typing import Any, Callable, Mapping

ENABLED = False  # True once configure() has set up an exporter in this process
OFF = nullcontext()  # what span() hands back while tracing is off: one object, no span made
_spans: Any = None  # service.tracing.spans, imported by configure() only when tracing is on


def wanted(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The exporters ``OTEL_TRACES_EXPORTER`` names (comma-separated), none when it is unset or
    ``none``, or when ``OTEL_SDK_DISABLED`` is true."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = [n.strip().lower() for n in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    return [] if "none" in names else names


def configure(metrics=None) -> bool:
    """Sets this process's traces up from the environment, once (a later call only adds
    ``metrics``, whose ``trace_spans_dropped`` counts the spans the exporter drops);
    True when tracing is on."""
    global ENABLED, _spans
    if ENABLED:
        from . import export  # noqa: PLC0415
        export.count_drops_in(metrics)
        return True
    names = wanted()
    if not names:
        return False
    try:
        from . import export, spans  # noqa: PLC0415  (the SDK, only when tracing is on)
        spans.setup(*export.install(names, metrics))
    except (ImportError, ValueError) as exc:  # the service serves on, untraced, and says why
        logging.getLogger("service.tracing").error("tracing off: %s", exc)
        return False
    _spans, ENABLED = spans, True
    return True


def shutdown() -> None:
    """Exports what is queued (within OTEL_BSP_EXPORT_TIMEOUT) and stops the exporter."""
    if ENABLED:
        from . import export  # noqa: PLC0415
        export.shutdown()


def span(name: str, **attributes):
    """A context manager: a child span of the current one while tracing is on, else nothing."""
    return _spans.span(name, attributes) if ENABLED else OFF


def traced(name: str) -> Callable:
    """Decorator: each call of the function (sync or async) in a span ``name`` while tracing is on."""
    def wrap(function: Callable) -> Callable:
        if inspect.iscoroutinefunction(function):
            @functools.wraps(function)
            async def call_async(*args, **kwargs):
                if not ENABLED:
                    return await function(*args, **kwargs)
                with _spans.span(name, {}):
                    return await function(*args, **kwargs)
            return call_async

        @functools.wraps(function)
        def call(*args, **kwargs):
            if not ENABLED:
                return function(*args, **kwargs)
            with _spans.span(name, {}):
                return function(*args, **kwargs)
        return call
    return wrap


def request(name: str, headers: Mapping[str, str], **attributes):
    """The span of one request received (kind SERVER, made current for the block), a child of
    the caller's span when ``headers`` (lower-case names: HTTP headers, or gRPC metadata as
    ``dict(context.invocation_metadata())``) hold a valid W3C ``traceparent`` (and
    ``tracestate``); a malformed one is ignored and the request starts a new trace. Yields the
    span (for ``finish_request``), or None while tracing is off."""
    return _spans.request(name, headers, attributes) if ENABLED else OFF


def finish_request(span, name: str, status: int, **attributes) -> None:
    """Names the request's span once its route is known and records its status (``status``: the
    HTTP status, or for gRPC the HTTP status its outcome maps to; 5xx marks the span an error)."""
    if span is not None:
        _spans.finish_request(span, name, status, attributes)


def current():
    """The current trace context, to carry with queued work (None while tracing is off)."""
    return _spans.current() if ENABLED else None


def attached(carrier: Mapping[str, str] | None):
    """A context manager: the W3C context in ``carrier`` (as ``carrier()`` wrote it) current for
    the block; nothing when tracing is off or there is none."""
    return _spans.attached(carrier) if ENABLED and carrier else OFF


def carrier() -> dict[str, str]:
    """The current span's W3C ``traceparent`` (and ``tracestate``): the headers of an outgoing
    request, or the trace fields of a wire message; empty while tracing is off or nothing is current."""
    return _spans.carrier() if ENABLED else {}


def batch(jobs: list, queued: bool = True):
    """A context manager around one engine execution: ``jobs`` have ``trace`` (``current()`` at
    submission) and ``enqueued_at`` (time.perf_counter()). Each job's wait gets a ``queue`` span
    in its own trace (unless ``queued`` is False: a garments job's later chunks), and the batch a
    span of its own, linked to each job's span, current for the block."""
    return _spans.batch(jobs, queued) if ENABLED else OFF


def batched(method: Callable) -> Callable:
    """Decorator of an async method taking a list of jobs: each call inside ``batch(jobs)``."""
    @functools.wraps(method)
    async def call(self, jobs: list):
        if not ENABLED:
            return await method(self, jobs)
        with _spans.batch(jobs, True):
            return await method(self, jobs)
    return call


def log_fields() -> dict[str, str]:
    """``trace_id`` and ``span_id`` of the current span, for a log line; empty when none."""
    return _spans.log_fields() if ENABLED else {}
