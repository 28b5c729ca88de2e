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


def protocol_message(error: ApiError) -> str:
    """The Open Inference Protocol's error text (HTTP's body, gRPC's details): the code, the
    message, the field named in it."""
    field = error.field
    return f"{error.code}: {error.message}" + (f" (field {field})" if field and field not in error.message else "")


def error_response(status: int, code: str, message: str, field: str | None = None,
                   headers: dict[str, str] | None = None, protocol: bool = False) -> JSONResponse:
    """``protocol``: the Open Inference Protocol's body, the field named in the message."""
    if protocol:
        body = {"error": protocol_message(ApiError(status, code, message, field))}
    else:
        body = {"error": {"code": code, "message": message, "field": field}}
    return JSONResponse(body, status_code=status, headers=headers)


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    request_context(request).error_code = exc.code
    return error_response(exc.status, exc.code, exc.message, exc.field, exc.headers, speaks_protocol(request))


# A request refused for the bytes in flight (service/limits.py) tries again after this many seconds:
# the requests holding them end within their deadlines, most well within.
OVER_BUDGET_RETRY_S = 2


def as_api_error(exc: Exception) -> ApiError | None:
    """The service's own outcomes (a refusal, the queue's, the bytes in flight) as the one answer
    shape; None for anything else (a bug: a 500, logged)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, QueueError):
        return from_queue_error(exc)
    if isinstance(exc, OverBudget):
        return ApiError(503, "busy", str(exc), headers={"Retry-After": str(OVER_BUDGET_RETRY_S)})
    return None


# The same answers over gRPC (service/api/grpc_server.py): the status code (grpc.StatusCode's name)
# of an error code where it is not its HTTP status's, else of that status. Retry-After travels as the
# trailing metadata ``retry-after`` (seconds). A message over the receive limit is grpc's own
# RESOURCE_EXHAUSTED, as HTTP's 413.
GRPC_STATUS: dict[str | int, str] = {
    "queue_full": "RESOURCE_EXHAUSTED", "overloaded": "RESOURCE_EXHAUSTED", "busy": "RESOURCE_EXHAUSTED",
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED", 413: "RESOURCE_EXHAUSTED", 415: "INVALID_ARGUMENT", 422: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED", CLIENT_GONE: "CANCELLED", 500: "INTERNAL", 503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def grpc_status(error: ApiError) -> str:
    return GRPC_STATUS.get(error.code, GRPC_STATUS.get(error.status, "UNKNOWN"))


async def _over_budget(request: Request, exc: OverBudget) -> JSONResponse:
    return await _api_error(request, as_api_error(exc))


async def _queue_error(request: Request, exc: QueueError) -> JSONResponse:
    return await _api_error(request, as_api_error(exc))


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
