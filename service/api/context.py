"""What one request tells the access log and the metrics: one typed object per request.

The middleware (service/api/middleware.py) puts a ``RequestContext`` in the ASGI
scope's state before the app runs; routes and error handlers fill it in through
``request_context(request)``, and the middleware reads it once the answer is sent.
"""
from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from ..limits import BudgetHold


@dataclass
class RequestContext:
    request_id: str
    timings_ms: dict[str, float] | None = None  # the stages of a route that runs work (Server-Timing)
    error_code: str | None = None  # the refusal's code, for the log and the rejected-requests metric
    client_gone: bool = False  # the client hung up before its answer: logged and counted as 499
    # The request's share of the bytes in flight (service/limits.py), given back when its answer is sent.
    hold: BudgetHold | None = None


def request_context(request: Request) -> RequestContext:
    return request.state.context
