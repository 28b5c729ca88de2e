"""The one error shape: ``{"error": {"code", "message", "field"}}`` with the right status.

Every failure path (our own, FastAPI's validation, Starlette's 404/405 and
anything unexpected) ends here, so a client parses a single format. The
routes of the Open Inference Protocol (``ProtocolRoute``: service/api/routes/v2.py)
answer the same with the protocol's shape, ``{"error": "<code>: <message>"}``,
which Triton's and KServe's clients read: the route that failed picks the body.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match

from ..codec.errors import ApiError, from_queue_error
from ..limits import OverBudget
from ..queue.outcomes import QueueError
from .context import request_context

log = logging.getLogger("service.errors")

CLIENT_GONE = 499  # nginx's code for "client closed request"; never reaches a client

_STATUS_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                 405: "method_not_allowed", 406: "not_acceptable", 413: "payload_too_large",
                 415: "unsupported_media_type", 422: "invalid_request", 429: "too_many_requests",
                 503: "unavailable", 504: "timeout"}


class ProtocolRoute(APIRoute):
    """A route of the Open Inference Protocol: its failures have the protocol's error body."""
    protocol_errors = True


def speaks_protocol(request: Request) -> bool:
    """Whether the route that failed answers in the protocol's body. A request no route matched
    (a 404) is the first of the app's ``unmatched_routes`` (install_error_handlers) that claims it."""
    route = request.scope.get("route")
    if route is None:
        route = next((r for r in request.app.state.unmatched_routes if r.matches(request.scope)[0] is not Match.NONE),
                     None)
    return getattr(route, "protocol_errors", False)


def error_response(status: int, code: str, message: str, field: str | None = None,
                   headers: dict[str, str] | None = None, protocol: bool = False) -> JSONResponse:
    """``protocol``: the Open Inference Protocol's body, the field named in the message."""
    if protocol:
        body = {"error": f"{code}: {message}" + (f" (field {field})" if field and field not in message else "")}
    else:
        body = {"error": {"code": code, "message": message, "field": field}}
    return JSONResponse(body, status_code=status, headers=headers)


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    request_context(request).error_code = exc.code
    return error_response(exc.status, exc.code, exc.message, exc.field, exc.headers, speaks_protocol(request))


# A request refused for the bytes in flight (service/limits.py) tries again after this many seconds:
# the requests holding them end within their deadlines, most well within.
OVER_BUDGET_RETRY_S = 2


async def _over_budget(request: Request, exc: OverBudget) -> JSONResponse:
    return await _api_error(request, ApiError(503, "busy", str(exc), headers={"Retry-After": str(OVER_BUDGET_RETRY_S)}))


async def _queue_error(request: Request, exc: QueueError) -> JSONResponse:
    return await _api_error(request, from_queue_error(exc))


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = _STATUS_CODES.get(exc.status_code, "http_error")
    request_context(request).error_code = code
    return error_response(exc.status_code, code, str(exc.detail), None, getattr(exc, "headers", None),
                          speaks_protocol(request))


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    location = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "header", "path")]
    request_context(request).error_code = "invalid_request"
    return error_response(422, "invalid_request", first.get("msg", "invalid request"),
                          ".".join(location) or None, protocol=speaks_protocol(request))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    context = request_context(request)
    log.exception("unhandled error", extra={"request_id": context.request_id})
    context.error_code = "internal"
    return error_response(500, "internal", "internal server error", protocol=speaks_protocol(request))


def install_error_handlers(app: FastAPI, unmatched_routes: Sequence[BaseRoute] = ()) -> None:
    """``unmatched_routes``: routes that claim the paths no route matched, so their 404s have
    those routes' error body (a protocol's namespace); none of them serves a request."""
    app.state.unmatched_routes = tuple(unmatched_routes)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(QueueError, _queue_error)
    app.add_exception_handler(OverBudget, _over_budget)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
