"""The routes' dependencies, each once, as typed ``Annotated`` aliases.

``ServiceDep``: the app's ServiceState. ``TicketDep``: a request about to queue work
(ready or 503, its deadline counted from now). ``QueryDep``: the output and scheduling
options given as query parameters (body fields of the same names win, service/api/inputs.py).
``OwnerDep``: who owns what the request creates (its API key, hashed).
``require_api_key`` guards every try-on router.
"""
from __future__ import annotations

import asyncio
import hmac
from dataclasses import dataclass, fields
from typing import Annotated, Mapping

from fastapi import Depends, Query, Request, Security
from fastapi.security import APIKeyHeader, HTTPBearer

from model.images import DEFAULT_QUALITY, OutputFormat, OutputSize

from ..jobs.wiring import owner_of
from ..queue.admission import own_work_s, too_short
from ..queue.priority import Priority
from ..settings import Settings
from .context import request_context
from .errors import ApiError
from .options import MIN_TIMEOUT_S, Scheduling
from .state import ServiceState


async def get_service(request: Request) -> ServiceState:
    """(async: FastAPI would run a plain function in its thread pool, a thread hop per request)"""
    return request.app.state.service


ServiceDep = Annotated[ServiceState, Depends(get_service)]


def given_key(headers: Mapping[str, str]) -> str:
    """The API key a request carries (``Authorization: Bearer`` or ``X-API-Key``; HTTP's headers or
    gRPC's metadata, whose keys are lower case), or ""."""
    auth = headers.get("authorization", "")
    return auth[7:].strip() if auth[:7].lower() == "bearer " else headers.get("x-api-key", "")


def check_api_key(settings: Settings, headers: Mapping[str, str]) -> None:
    """Open when TRYON_API_KEYS is empty; otherwise ``Authorization: Bearer`` or ``X-API-Key``."""
    keys = settings.key_secrets
    if not keys:
        return
    given = given_key(headers)
    if not any(hmac.compare_digest(given.encode(), key.encode()) for key in keys):
        raise ApiError(401, "unauthorized", "a valid API key is required (Authorization: Bearer KEY or X-API-Key)",
                       headers={"WWW-Authenticate": "Bearer"})


# The two ways a key is sent, as OpenAPI security schemes: every route that depends on require_api_key
# is marked as keyed in the document (install_openapi drops the marks when keys are off).
_BEARER = HTTPBearer(auto_error=False, scheme_name="bearer")
_X_API_KEY = APIKeyHeader(name="X-API-Key", auto_error=False, scheme_name="apiKey")


async def require_api_key(request: Request, service: ServiceDep, _bearer=Security(_BEARER),
                          _header=Security(_X_API_KEY)) -> None:
    """check_api_key, as a dependency of every keyed router."""
    check_api_key(service.settings, request.headers)


async def key_owner(request: Request, service: ServiceDep) -> str:
    """Who owns what this request creates: a hash of its API key ("" with keys off), so a job is
    seen only with the key that created it."""
    if not service.settings.api_keys:
        return ""
    return owner_of(given_key(request.headers))


OwnerDep = Annotated[str, Depends(key_owner)]


def require_ready(service: ServiceState, network: bool = True) -> None:
    """503 unless the replica can serve the request: ``weights_unavailable`` (no Retry-After:
    waiting does not help) once the checkpoint failed to load, which a route that runs no
    network (``network=False``) does without; ``not_ready`` while it starts."""
    weights_failure = service.components.reason("weights")
    if weights_failure is not None:
        if not network:
            return
        raise ApiError(503, "weights_unavailable", f"the weights could not be loaded: {weights_failure}")
    if not service.ready or service.queue is None:
        raise ApiError(503, "not_ready", "the model is not loaded yet", headers={"Retry-After": "5"})


@dataclass
class Ticket:
    """A request about to queue work: when it arrived, its deadline and priority, and the
    timings it collects (shared with the access log through its RequestContext)."""
    arrived: float  # on the event loop's clock
    deadline: float
    timings: dict[str, float]
    priority: Priority | None = None  # set by schedule(): the request's, or the route's default
    one_forward_s: float = 0.0  # the engine's one request alone, as admission control counts it (0: unknown here)

    def schedule(self, options: Scheduling, default_priority: Priority) -> None:
        """Applies the request's own priority and (shorter) timeout; TRYON_REQUEST_TIMEOUT_S caps it. A
        timeout under one forward alone can never be met, however idle the server: 422 naming it."""
        self.priority = options.priority or default_priority
        if options.timeout is not None:
            if options.timeout < self.one_forward_s:
                raise ApiError(422, "timeout_too_short", too_short(options.timeout, self.one_forward_s), "timeout")
            self.deadline = min(self.deadline, self.arrived + options.timeout)


def start_ticket(service: ServiceState) -> Ticket:
    """A ticket for work about to be queued: ready or 503, its deadline from now."""
    require_ready(service)
    now = asyncio.get_running_loop().time()
    rate = service.queue.rate  # a front end of TRYON_WORKERS > 1: the engine's, as it timed it at start
    return Ticket(now, now + service.settings.request_timeout_s, {},
                  one_forward_s=own_work_s(rate, service.settings.max_batch_size) if rate is not None else 0.0)


async def take_ticket(request: Request, service: ServiceDep) -> Ticket:
    """Dependency of the routes that run the model: start_ticket, its timings in the request's context."""
    ticket = start_ticket(service)
    request_context(request).timings_ms = ticket.timings
    return ticket


TicketDep = Annotated[Ticket, Depends(take_ticket)]


@dataclass(frozen=True)
class QueryOptions:
    """The options given as query parameters (None: not given)."""
    format: OutputFormat | None = None
    quality: int | None = None
    size: OutputSize | None = None
    priority: Priority | None = None
    timeout: float | None = None

    def given(self) -> dict:
        # (a shallow read: dataclasses.asdict deep-copies every value, on every request)
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {k: v for k, v in values.items() if v is not None}


async def output_query(
        format: OutputFormat | None = Query(None, description="output format (jpeg)"),
        quality: int | None = Query(None, ge=1, le=100, description=f"JPEG/WebP quality ({DEFAULT_QUALITY})"),
        size: OutputSize | None = Query(None, description="model size, or the person image's original size (model)"),
        priority: Priority | None = Query(None, description="interactive or bulk (also X-Priority); "
                                     "interactive work is batched first (default: interactive, bulk for "
                                     "/v1/tryon/batch)"),
        timeout: float | None = Query(None, ge=MIN_TIMEOUT_S, allow_inf_nan=False,
                                      description=f"seconds this request may take, from {MIN_TIMEOUT_S} to "
                                                  "TRYON_REQUEST_TIMEOUT_S (also X-Request-Timeout)"),
) -> QueryOptions:
    """The options given as query parameters; body fields of the same names win."""
    return QueryOptions(format, quality, size, priority, timeout)


QueryDep = Annotated[QueryOptions, Depends(output_query)]
