"""The HTTP surface: POST /v1/tryon, and the open operational endpoints."""
from __future__ import annotations

import asyncio
import hmac
import time
from dataclasses import dataclass

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from model.images import MEDIA_TYPES, TryOnInputs, encode_image, output_image
from model.person import PersonInputs

from .batcher import GarmentsStream, Job, JobResult
from .cache import CachedResponse, ResponseCache
from .errors import CLIENT_GONE, ApiError
from .inputs import (Garments, JobOptions, OutputFormat, OutputOptions, OutputSize, RequestParts, fetch_parts, has_urls,
                     parse_job_options, read_request)
from .metrics import CONTENT_TYPE_LATEST
from .openapi import (BINARY, IMAGE_SCHEMA, JSON_IMAGE, MODEL_ERRORS, PERSON_MIX, binary_content, error_responses,
                      person_request_body)
from .outcomes import DeadlineExceeded, DropReason, Priority
from .person import decode_garment, decode_person, detection_report
from .state import ServiceState, get_service

STREAM_CHUNK = 64 * 1024
TRYON_ROUTE = "/v1/tryon"
# Short CPU work runs on the event loop: handing it to a thread and back cost more server CPU
# than the work itself (measured, docs/scaling.md). Long work (a person photo's detection, big
# files, big outputs) still goes to a thread, so the loop is never held for long.
INLINE_DECODE_BYTES = 512 * 1024  # the images of a request, as sent: some 7 ms of JPEG decoding here
INLINE_ENCODE_PIXELS = 1 << 20

operations = APIRouter(tags=["operations"])


@operations.get("/healthz", summary="Liveness: the process answers and its device works")
async def healthz(service: ServiceState = Depends(get_service)) -> JSONResponse:
    if not service.healthy:
        return JSONResponse({"status": "device_failed", "reason": service.batcher.device_failure}, status_code=503)
    return JSONResponse({"status": "alive"})


@operations.get("/readyz", summary="Readiness: 200 only when loaded, warm and not draining",
                responses={503: {"description": "starting or draining: the same information, `ready` false",
                                 "content": {"application/json": {"schema": {"type": "object"}}}}})
async def readyz(service: ServiceState = Depends(get_service)) -> JSONResponse:
    info = service.info
    return JSONResponse(info, status_code=200 if info["ready"] else 503)


@operations.get("/metrics", summary="Prometheus metrics", response_class=Response,
                responses={200: {"description": "Prometheus text exposition",
                                 "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}})
async def metrics(service: ServiceState = Depends(get_service)) -> Response:
    service.metrics.refresh(service.batcher.depth if service.batcher else 0,
                            service.engine.device if service.engine else None)
    return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)


async def require_api_key(request: Request, service: ServiceState = Depends(get_service)) -> None:
    """Open when TRYON_API_KEYS is empty; otherwise ``Authorization: Bearer`` or ``X-API-Key``."""
    keys = service.settings.api_keys
    if not keys:
        return
    auth = request.headers.get("authorization", "")
    given = auth[7:].strip() if auth[:7].lower() == "bearer " else request.headers.get("x-api-key", "")
    if not any(hmac.compare_digest(given.encode(), key.encode()) for key in keys):
        raise ApiError(401, "unauthorized", "a valid API key is required (Authorization: Bearer KEY or X-API-Key)",
                       headers={"WWW-Authenticate": "Bearer"})


tryon = APIRouter(tags=["try-on"], dependencies=[Depends(require_api_key)])

TRYON_OPENAPI = {
    "requestBody": person_request_body({"multipart": {"cloth": {**IMAGE_SCHEMA, **BINARY}},
                                        "json": {"cloth": JSON_IMAGE}}),
    "responses": {"200": {"description": "the try-on image, streamed", "content": binary_content(*MEDIA_TYPES.values())}},
}


def require_ready(service: ServiceState) -> None:
    if not service.ready or service.batcher is None:
        raise ApiError(503, "not_ready", "the model is not loaded yet", headers={"Retry-After": "5"})


@dataclass
class Work:
    """A request about to queue work: when it arrived, its deadline and priority, and the
    timings it collects (shared with the access log through ``request.state``)."""
    arrived: float  # on the event loop's clock
    deadline: float
    timings: dict[str, float]
    priority: Priority = Priority.INTERACTIVE

    def schedule(self, options: JobOptions, default_priority: Priority) -> None:
        """Applies the request's own priority and (shorter) timeout; TRYON_REQUEST_TIMEOUT_S caps it."""
        self.priority = options.priority or default_priority
        if options.timeout is not None:
            self.deadline = min(self.deadline, self.arrived + options.timeout)


async def begin_work(request: Request, service: ServiceState = Depends(get_service)) -> Work:
    """Dependency of the routes that run the model: ready or 503, deadline from now."""
    require_ready(service)
    now = asyncio.get_running_loop().time()
    work = Work(now, now + service.settings.request_timeout_s, {})
    request.state.timings_ms = work.timings
    request.state.work_arrived = now
    return work


async def output_query(
        format: OutputFormat | None = Query(None, description="output format (jpeg)"),
        quality: int | None = Query(None, ge=1, le=100, description="JPEG/WebP quality (90)"),
        size: OutputSize | None = Query(None, description="model size, or the person image's original size (model)"),
        priority: Priority | None = Query(None, description="interactive or bulk (also X-Priority); "
                                     "interactive work is batched first (default: interactive, bulk for "
                                     "/v1/tryon/batch)"),
        timeout: float | None = Query(None, gt=0, allow_inf_nan=False, description="seconds this request may take, at most "
                                    "TRYON_REQUEST_TIMEOUT_S (also X-Request-Timeout)"),
) -> dict:
    """The options given as query parameters; body fields of the same names win."""
    return {"format": format, "quality": quality, "size": size, "priority": priority, "timeout": timeout}


class ClientGone(Exception):
    """The client disconnected while its request waited."""


async def _client_gone(request: Request) -> None:
    """Returns when the client disconnects (the body has been read, so only that can arrive)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def await_job(job: Job, request: Request) -> JobResult:
    loop = asyncio.get_running_loop()
    watcher = loop.create_task(_client_gone(request))
    try:
        done, _ = await asyncio.wait({job.future, watcher}, timeout=max(0.0, job.deadline - loop.time()),
                                     return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if job.future in done:
        return job.future.result()
    if watcher in done:
        job.abandon(DropReason.CLIENT_GONE)
        raise ClientGone
    job.abandon(DropReason.DEADLINE)
    raise DeadlineExceeded("the request was not served within its deadline "
                           f"({job.deadline - request.state.work_arrived:.3g} s)")


async def read_parts(request: Request, service: ServiceState, query: dict, garments: Garments,
                     timings: dict[str, float], work: Work | None = None,
                     default_priority: Priority = Priority.INTERACTIVE) -> tuple[RequestParts, OutputOptions]:
    """The request's parts with every URL fetched (``timings["fetch"]`` when there were any);
    ``work``, when given, takes the request's priority and timeout."""
    mark = time.perf_counter()
    query = {k: v for k, v in query.items() if v is not None}
    parts, options = await read_request(request, service.settings, query, garments)
    if work is not None:
        # Admission control waits for submit (after decoding): a cache hit is answered whatever the queue holds.
        work.schedule(parse_job_options(query | parts.options, request.headers), default_priority)
    if has_urls(parts):
        parts = await fetch_parts(parts, service.fetcher)
        timings["fetch"] = (time.perf_counter() - mark) * 1000
    return parts, options


async def run_job(service: ServiceState, inputs, work: Work, request: Request) -> JobResult | GarmentsStream | None:
    """Queues the work and waits for it; None when the client has gone (answer CLIENT_GONE)."""
    if asyncio.get_running_loop().time() >= work.deadline:
        raise DeadlineExceeded("the deadline passed before the request reached the queue")
    try:
        return await await_job(service.batcher.submit(inputs, work.deadline, priority=work.priority), request)
    except ClientGone:
        request.state.client_gone = True
        request.state.error_code = "client_gone"
        return None


def server_timing(timings: dict[str, float]) -> str:
    """The Server-Timing header; rounds ``timings`` in place for the access log too."""
    timings.update({k: round(v, 2) for k, v in timings.items()})
    return ", ".join(f"{k};dur={v}" for k, v in timings.items())


async def _chunks(body: bytes):
    for start in range(0, len(body), STREAM_CHUNK):
        yield body[start:start + STREAM_CHUNK]


async def off_loop_unless(short: bool, work, *args):
    """``work(*args)`` on the event loop when ``short``, else in a thread."""
    return work(*args) if short else await asyncio.to_thread(work, *args)


def short_decode(parts: RequestParts) -> bool:
    """A masked model and pose map as they are (letterboxed, nothing drawn or detected) and a
    garment, of at most INLINE_DECODE_BYTES together."""
    images = [parts.person.get("masked_model"), parts.person.get("pose"), parts.cloths[0]]
    return (set(parts.given) == {"masked_model", "pose"} and all(isinstance(i, bytes) for i in images)
            and sum(map(len, images)) <= INLINE_DECODE_BYTES)


def _decode(parts, settings, cache: ResponseCache | None,
            options: OutputOptions) -> tuple[PersonInputs, TryOnInputs, str | None]:
    """What the model sees, and its cache key (a hit's time is mostly this)."""
    person = decode_person(parts, settings)
    inputs = decode_garment(person, parts.cloths[0], settings)
    return person, inputs, cache.key(inputs, options) if cache is not None else None


def encode_output(output, frame, options: OutputOptions) -> bytes:
    """One (3, H, W) result as image bytes, at model size or the person's original size."""
    return encode_image(output_image(output, frame, options.size), options.format, options.quality)


@tryon.post(TRYON_ROUTE, summary="Dress the person in the cloth; the image comes back streamed",
            description=PERSON_MIX,
            response_class=Response, openapi_extra=TRYON_OPENAPI, responses=error_responses(*MODEL_ERRORS))
async def tryon_image(
        request: Request,
        service: ServiceState = Depends(get_service),
        work: Work = Depends(begin_work),
        query: dict = Depends(output_query),
) -> Response:
    """Options may also be sent as body fields of the same names, which win over the query."""
    timings = work.timings
    parts, options = await read_parts(request, service, query, "one", timings, work)
    mark = time.perf_counter()
    if isinstance(parts.cloths[0], ApiError):
        raise parts.cloths[0]
    cache = service.cache
    person, inputs, key = await off_loop_unless(short_decode(parts), _decode, parts, service.settings, cache, options)
    timings["decode"] = (time.perf_counter() - mark) * 1000
    person_headers = detection_report(person, timings, service.metrics)

    if cache is not None:
        mark = time.perf_counter()
        cached = await cache.lookup(key, TRYON_ROUTE)
        timings["cache"] = (time.perf_counter() - mark) * 1000
        if cached is not None:  # answered without queueing, whatever the queue holds
            return _image_response(cached.body, cached.media_type, options, timings,
                                   {"X-Cache": "hit"} | person_headers)

    result = await run_job(service, inputs, work, request)
    if result is None:
        return Response(status_code=CLIENT_GONE)
    timings["queue"] = result.queue_s * 1000
    timings["inference"] = result.inference_s * 1000

    mark = time.perf_counter()
    short = options.size == "model" or inputs.person_frame.source_size_wh[0] * inputs.person_frame.source_size_wh[1] \
        <= INLINE_ENCODE_PIXELS
    body = await off_loop_unless(short, encode_output, result.output, inputs.person_frame, options)
    timings["encode"] = (time.perf_counter() - mark) * 1000
    media_type = MEDIA_TYPES[options.format]
    headers = {"X-Batch-Size": str(result.batch_size)} | person_headers
    if cache is not None:
        cache.remember(key, CachedResponse(media_type, body))
        headers["X-Cache"] = "miss"
    return _image_response(body, media_type, options, timings, headers)


def _image_response(body: bytes, media_type: str, options: OutputOptions, timings: dict[str, float],
                    headers: dict[str, str]) -> Response:
    """Streamed in STREAM_CHUNK pieces; a body of one piece is sent as it is (the same bytes and
    headers, without a streaming task per response)."""
    headers = {"Server-Timing": server_timing(timings), "Content-Length": str(len(body)),
               "Content-Disposition": f'inline; filename="tryon.{options.format}"', **headers}
    if len(body) <= STREAM_CHUNK:
        return Response(body, media_type=media_type, headers=headers)
    return StreamingResponse(_chunks(body), media_type=media_type, headers=headers)
