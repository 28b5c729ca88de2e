"""The steps the routes that run the model share: read the parts, queue the job and wait for it,
encode, Server-Timing, stream the image back. No route imports from another route."""
from __future__ import annotations

import asyncio

from fastapi import Request, Response
from fastapi.responses import StreamingResponse

from model.images import TryOnInputs, header_pixels, output_size_error
from model.stopwatch import Stopwatch

from ..queue.interface import QueuedJob
from ..queue.jobs import GarmentsInputs, GarmentsStream, JobResult
from ..queue.outcomes import DeadlineExceeded, DropReason, Priority, QueueError
from .context import request_context
from .deps import QueryOptions, Work
from ..codec.output import OutputOptions
from ..codec.person import decode_bytes
from ..codec.sources import RequestParts
from .errors import ApiError
from .inputs import GarmentLimit, Garments, JobOptions, fetch_parts, has_urls, parse_job_options, read_request
from .state import ServiceState

STREAM_CHUNK = 64 * 1024


class ClientGone(Exception):
    """The client disconnected while its request waited."""


async def _client_gone(request: Request) -> None:
    """Returns when the client disconnects (the body has been read, so only that can arrive)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def await_jobs(jobs: list[QueuedJob], work: Work, request: Request) -> list[JobResult | GarmentsStream]:
    """The jobs' answers once all are in, under one deadline (the first job's) and one watch for
    the client going; a failure of one fails them all, and the others are abandoned."""
    loop = asyncio.get_running_loop()
    deadline = jobs[0].deadline
    waiting = {job.future for job in jobs}
    watcher = loop.create_task(_client_gone(request))
    try:
        while waiting:
            done, _ = await asyncio.wait(waiting | {watcher}, timeout=max(0.0, deadline - loop.time()),
                                         return_when=asyncio.FIRST_COMPLETED)
            if watcher in done:
                _abandon(jobs, DropReason.CLIENT_GONE)
                raise ClientGone
            if not done:
                _abandon(jobs, DropReason.DEADLINE)
                raise DeadlineExceeded(f"the request was not served within its deadline "
                                       f"({deadline - work.arrived:.3g} s)")
            waiting -= done
            failed = next((f for f in done if f.exception() is not None), None)
            if failed is not None:
                _abandon(jobs, DropReason.REQUEST_FAILED)
                raise failed.exception()
    finally:
        watcher.cancel()
    return [job.future.result() for job in jobs]


def _abandon(jobs: list[QueuedJob], reason: DropReason) -> None:
    for job in jobs:
        if not job.future.done():
            job.abandon(reason)


async def read_parts(request: Request, service: ServiceState, query: QueryOptions | None, garments: Garments,
                     timings: dict[str, float], work: Work | None = None,
                     default_priority: Priority = Priority.INTERACTIVE,
                     limit: GarmentLimit | None = None) -> tuple[RequestParts, OutputOptions]:
    """The request's parts with every URL fetched (``timings["fetch"]`` when there were any) and
    measured for decoding (``complete_parts``); ``work``, when given, takes the request's priority
    and timeout; ``limit``: read_request's."""
    clock = Stopwatch()
    parts, options = await read_request(request, service.settings, query.given() if query is not None else {},
                                        garments, limit)
    if work is not None:
        # Admission control waits for submit (after decoding): a cache hit is answered whatever the queue holds.
        work.schedule(scheduling_of(request, query, parts), default_priority)
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


def scheduling_of(request: Request, query: QueryOptions | None, parts: RequestParts) -> JobOptions:
    """The request's priority and timeout: body fields, else query parameters, else headers."""
    given = query.given() if query is not None else {}
    return parse_job_options(given | parts.options, request.headers)


async def run_job(service: ServiceState, inputs: TryOnInputs | GarmentsInputs, work: Work,
                  request: Request) -> JobResult | GarmentsStream | None:
    """Queues the work and waits for it; None when the client has gone (answer CLIENT_GONE)."""
    results = await run_jobs(service, [inputs], work, request)
    return None if results is None else results[0]


async def run_jobs(service: ServiceState, items: list[TryOnInputs | GarmentsInputs], work: Work,
                   request: Request) -> list[JobResult | GarmentsStream] | None:
    """``run_job`` for the items of one request (a batch dimension of the protocol's infer):
    each its own job, so the batcher batches them as it batches everyone's; all or nothing."""
    if asyncio.get_running_loop().time() >= work.deadline:
        raise DeadlineExceeded("the deadline passed before the request reached the queue")
    jobs = []
    try:
        for inputs in items:
            jobs.append(service.batcher.submit(inputs, work.deadline, work.priority))
    except QueueError:
        _abandon(jobs, DropReason.REQUEST_FAILED)
        raise
    try:
        return await await_jobs(jobs, work, request)
    except ClientGone:
        context = request_context(request)
        context.client_gone = True
        context.error_code = "client_gone"
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
