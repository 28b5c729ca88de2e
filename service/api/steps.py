"""The steps the routes that run the model share: read the parts, queue the work and wait for it,
encode, Server-Timing, stream the image back. No route imports from another route."""
from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

from fastapi import Request, Response
from fastapi.responses import StreamingResponse

from model.images import TryOnInputs, header_pixels, output_size_error
from model.stopwatch import Stopwatch

from ..queue.interface import QueuedWork
from ..queue.work import GarmentsInputs, GarmentsStream, WorkResult
from ..queue.drop_reason import DropReason
from ..queue.outcomes import DeadlineExceeded, QueueError
from ..queue.priority import Priority
from .context import request_context
from .deps import QueryOptions, Ticket
from ..codec.fetch import fetch_parts, has_urls
from ..codec.output import OutputOptions
from ..codec.person import decode_bytes
from ..codec.sources import RequestParts
from .errors import ApiError
from .inputs import GarmentLimit, Garments, read_request
from .options import Scheduling, parse_scheduling
from .state import ServiceState

STREAM_CHUNK = 64 * 1024


class ClientGone(Exception):
    """The client disconnected while its request waited."""


def client_gone(request: Request) -> Callable[[], Awaitable[None]]:
    """The watch for an HTTP client going (await_works' ``gone``): returns when it disconnects (the
    body has been read, so only that can arrive), marked in its RequestContext for the log."""
    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        context = request_context(request)
        context.client_gone = True
        context.error_code = "client_gone"
    return gone


async def await_works(works: list[QueuedWork], ticket: Ticket,
                      gone: Callable[[], Awaitable[None]] | None) -> list[WorkResult | GarmentsStream]:
    """The answers of ``works`` once all are in, under one deadline (the first one's) and one watch for
    the client going (``gone`` returns when it has; or the caller is cancelled, as a gRPC call
    is); a failure of one fails them all, and the others are abandoned."""
    loop = asyncio.get_running_loop()
    deadline = works[0].deadline
    waiting = {work.future for work in works}
    watcher = loop.create_task(gone()) if gone is not None else loop.create_future()
    try:
        while waiting:
            done, _ = await asyncio.wait(waiting | {watcher}, timeout=max(0.0, deadline - loop.time()),
                                         return_when=asyncio.FIRST_COMPLETED)
            if watcher in done:
                _abandon(works, DropReason.CLIENT_GONE)
                raise ClientGone
            if not done:
                _abandon(works, DropReason.DEADLINE)
                raise DeadlineExceeded(f"the request was not served within its deadline "
                                       f"({deadline - ticket.arrived:.3g} s)")
            waiting -= done
            failed = next((f for f in done if f.exception() is not None), None)
            if failed is not None:
                _abandon(works, DropReason.REQUEST_FAILED)
                raise failed.exception()
    except asyncio.CancelledError:
        _abandon(works, DropReason.CLIENT_GONE)
        raise
    finally:
        watcher.cancel()
    return [work.future.result() for work in works]


def _abandon(works: list[QueuedWork], reason: DropReason) -> None:
    for work in works:
        if not work.future.done():
            work.abandon(reason)


async def read_parts(request: Request, service: ServiceState, query: QueryOptions | None, garments: Garments,
                     timings: dict[str, float], ticket: Ticket | None = None,
                     default_priority: Priority = Priority.INTERACTIVE,
                     limit: GarmentLimit | None = None) -> tuple[RequestParts, OutputOptions]:
    """The request's parts with every URL fetched (``timings["fetch"]`` when there were any) and
    measured for decoding (``complete_parts``); ``ticket``, when given, takes the request's priority
    and timeout; ``limit``: read_request's."""
    clock = Stopwatch()
    parts, options = await read_request(request, service.settings, query.given() if query is not None else {},
                                        garments, limit)
    if ticket is not None:
        # Admission control waits for submit (after decoding): a cache hit is answered whatever the queue holds.
        ticket.schedule(scheduling_of(request, query, parts), default_priority)
    parts = await complete_parts(request, service, parts, options, garments, timings, clock)
    return parts, options


async def complete_parts(request: Request, service: ServiceState, parts: RequestParts, options: OutputOptions,
                         garments: Garments, timings: dict[str, float], clock: Stopwatch,
                         decodes_here: bool = True) -> RequestParts:
    """``parts`` with every URL fetched, an output size the format can not hold refused (422 naming the
    format's limit), and the bytes decoding will take measured from the headers (``parts.decode_bytes``;
    an image over the whole budget is a 413) and, when ``decodes_here``, taken from the request's share
    of the bytes in flight."""
    hold = request_context(request).hold
    if has_urls(parts):
        parts = await fetch_parts(parts, service.fetcher, hold)
        timings["fetch"] = clock.elapsed_ms
    if garments != "none" and options.size == "original":
        person = parts.person.get("masked_model", parts.person.get("person"))
        measured = header_pixels(person) if isinstance(person, bytes) else None
        refusal = output_size_error(measured.size_wh, options.format) if measured is not None else None
        if refusal is not None:
            raise ApiError(422, "output_too_large", f"{refusal}: ask for size=model or another format", "size")
    parts.decode_bytes = decode_bytes(parts, service.settings, service.budget.limit, garments)
    if decodes_here and hold is not None:
        hold.take(parts.decode_bytes, "decoding the images")
    return parts


def scheduling_of(request: Request, query: QueryOptions | None, parts: RequestParts) -> Scheduling:
    """The request's priority and timeout: body fields, else query parameters, else headers."""
    given = query.given() if query is not None else {}
    return parse_scheduling(given | parts.options, request.headers)


async def run_work(service: ServiceState, inputs: TryOnInputs | GarmentsInputs, ticket: Ticket,
                   request: Request) -> WorkResult | GarmentsStream | None:
    """Queues the work and waits for it; None when the client has gone (answer CLIENT_GONE)."""
    results = await run_works(service, [inputs], ticket, request)
    return None if results is None else results[0]


async def run_works(service: ServiceState, items: list[TryOnInputs | GarmentsInputs], ticket: Ticket,
                    request: Request) -> list[WorkResult | GarmentsStream] | None:
    """``queue_works`` for an HTTP request: None when the client has gone (answer CLIENT_GONE)."""
    return await queue_works(service, items, ticket, client_gone(request))


async def queue_works(service: ServiceState, items: list[TryOnInputs | GarmentsInputs], ticket: Ticket,
                      gone: Callable[[], Awaitable[None]] | None) -> list[WorkResult | GarmentsStream] | None:
    """The items of one request (a batch dimension of the protocol's infer) queued and waited for:
    each its own ``Work``, so the batcher batches them as it batches everyone's; all or nothing. None
    when the client has gone (``gone``: await_works')."""
    if asyncio.get_running_loop().time() >= ticket.deadline:
        raise DeadlineExceeded("the deadline passed before the request reached the queue")
    works = []
    try:
        for inputs in items:
            works.append(service.queue.submit(inputs, ticket.deadline, ticket.priority))
    except QueueError:
        _abandon(works, DropReason.REQUEST_FAILED)
        raise
    try:
        return await await_works(works, ticket, gone)
    except ClientGone:
        return None


def server_timing(timings: dict[str, float]) -> str:
    """The Server-Timing header; rounds ``timings`` in place for the access log too."""
    timings.update({k: round(v, 2) for k, v in timings.items()})
    return ", ".join(f"{k};dur={v}" for k, v in timings.items())


async def off_loop_unless(short: bool, work, *args):
    """``work(*args)`` on the event loop when ``short``, else in a thread."""
    return work(*args) if short else await asyncio.to_thread(work, *args)


async def _chunks(body: bytes):
    for start in range(0, len(body), STREAM_CHUNK):
        yield body[start:start + STREAM_CHUNK]


def image_response(body: bytes, media_type: str, options: OutputOptions, timings: dict[str, float],
                   headers: dict[str, str]) -> Response:
    """Streamed in STREAM_CHUNK pieces; a body of one piece is sent as it is (the same bytes and
    headers, without a streaming task per response)."""
    headers = {"Server-Timing": server_timing(timings), "Content-Length": str(len(body)),
               "Content-Disposition": f'inline; filename="tryon.{options.format}"', **headers}
    if len(body) <= STREAM_CHUNK:
        return Response(body, media_type=media_type, headers=headers)
    return StreamingResponse(_chunks(body), media_type=media_type, headers=headers)
