"""Per-request context as a plain ASGI middleware (it never buffers or wraps
the body, so streaming and disconnect detection stay intact): the request
id, the X-Weights header, metrics by route and status, one JSON log line, and
with tracing on the request's span (the caller's traceparent honoured)."""
from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.datastructures import MutableHeaders

from model.stopwatch import Stopwatch

from .. import tracing
from .context import RequestContext
from .errors import CLIENT_GONE
from .state import ServiceState

log = logging.getLogger("service.access")
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


@dataclass(frozen=True)
class RouteGroups:
    """The routes (their paths) whose requests are counted or logged apart; the app names them,
    so no middleware imports a route."""
    inference: tuple[str, ...] = ()  # the requests Triton's request metrics count
    tryon: tuple[str, ...] = ()  # a refusal counted by its reason (rejected)
    quiet: tuple[str, ...] = ()  # probes and scrapes: a success logged at debug


_TRACE_HEADERS = (b"traceparent", b"tracestate")


def _trace_headers(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """The caller's W3C trace context headers, for tracing.request."""
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in headers if name in _TRACE_HEADERS}


def _same_origin(location: str) -> str:
    """An absolute URL's path and query, as a relative reference ("//x" kept from reading as a host)."""
    parts = urlsplit(location)
    path = "/" + (parts.path or "/").lstrip("/")
    return path + (f"?{parts.query}" if parts.query else "")


class RequestContextMiddleware:
    def __init__(self, app, service: ServiceState, routes: RouteGroups = RouteGroups()):
        self.app = app
        self.service = service
        self.routes = routes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        sent_id = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = sent_id if _CLIENT_ID.match(sent_id) else uuid.uuid4().hex
        context = RequestContext(request_id, hold=self.service.budget.hold())
        scope.setdefault("state", {})["context"] = context
        clock = Stopwatch()
        status = [500]

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                headers = MutableHeaders(scope=message)
                if 300 <= status[0] < 400 and "location" in headers:
                    # Starlette's trailing-slash redirect builds an absolute URL from the request's Host
                    # header: echoed, it points a shared cache or a careless client anywhere. A path is enough.
                    headers["Location"] = _same_origin(headers["location"])
                headers["X-Request-ID"] = request_id
                if weights := self.service.weights_header:
                    headers["X-Weights"] = weights
            await send(message)

        traced = tracing.request(scope["method"], _trace_headers(scope["headers"])) if tracing.ENABLED else tracing.OFF
        with traced as span:
            try:
                await self.app(scope, receive, send_with_headers)
            finally:
                context.hold.release()
                self._record(scope, context, status[0], clock.elapsed, span)

    def _record(self, scope, context: RequestContext, status: int, seconds: float, span) -> None:
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        status = CLIENT_GONE if context.client_gone else status
        if span is not None:
            tracing.finish_request(span, f"{scope['method']} {route}", status, **{
                "http.route": route, "http.request.method": scope["method"], "tryon.request_id": context.request_id})
        metrics = self.service.metrics
        metrics.requests.labels(route, scope["method"], str(status)).inc()
        metrics.latency.labels(route).observe(seconds)
        reason = context.error_code or str(status)
        if route in self.routes.tryon and status >= 400:
            metrics.rejected.labels(reason).inc()
        if route in self.routes.inference:
            metrics.observe_request(route, seconds, reason if status >= 400 else None)
        fields = {"request_id": context.request_id, "method": scope["method"], "path": scope["path"],
                  "status": status, "duration_ms": round(seconds * 1000, 2)}
        if context.timings_ms is not None:
            fields["timings_ms"] = context.timings_ms
        if context.error_code is not None:
            fields["error_code"] = context.error_code
        # Probes and scrapes arrive every few seconds: only their failures are worth a line at info.
        quiet = route in self.routes.quiet and status < 400
        log.log(logging.DEBUG if quiet else logging.INFO, "request", extra=fields)
