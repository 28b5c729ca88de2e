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
from .errors import ApiError
from .inputs import (KEYPOINTS_FIELD, PERSON_FIELDS, Garments, OutputFormat, OutputOptions, OutputSize,
                     RequestParts, fetch_parts, has_urls, read_request)
from .metrics import CONTENT_TYPE_LATEST
from .middleware import CLIENT_GONE
from .person import decode_garment, decode_person, detection_report
from .state import ServiceState, get_service

STREAM_CHUNK = 64 * 1024

operations = APIRouter(tags=["operations"])


@operations.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict:
    return {"status": "alive"}


@operations.get("/readyz", summary="Readiness: 200 only when loaded, warm and not draining")
async def readyz(service: ServiceState = Depends(get_service)) -> JSONResponse:
    info = service.info
    return JSONResponse(info, status_code=200 if info["ready"] else 503)


@operations.get("/metrics", summary="Prometheus metrics")
async def metrics(service: ServiceState = Depends(get_service)) -> Response:
    if service.batcher is not None:
        service.metrics.queue_depth.set(service.batcher.depth)
    return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)


def require_api_key(request: Request, service: ServiceState = Depends(get_service)) -> None:
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

IMAGE_SCHEMA = {"type": "string", "description": "an image file, or an http(s) URL as a text field"}
JSON_IMAGE = {"type": "string", "description": "an http(s) URL, or the image's bytes as base64 (or a data: URL)"}
_KEYPOINTS = {"description": "body keypoints as JSON (OpenPose, a list of 18/25/17 (x, y, confidence) "
                             "points, or COCO): a text field or a file"}
_OPTIONS = {"format": {"type": "string", "enum": ["jpeg", "png", "webp"], "default": "jpeg"},
            "quality": {"type": "integer", "minimum": 1, "maximum": 100, "default": 90},
            "size": {"type": "string", "enum": ["model", "original"], "default": "model"}}
PERSON_MIX = ("Person side, any mix that determines the masked model and the pose map: masked_model + pose; "
              "person + keypoints (+ parse); masked_model + keypoints; person + keypoints (+ parse) + pose; "
              "person alone (+ parse, + pose): its keypoints are detected (`X-Person-Count`; 422 `no_person`, "
              "`missing_body_points`, `person_too_small`). "
              "An incomplete or ambiguous mix is a 422 whose `field` lists the inputs concerned.")


def person_request_body(garments: dict, required: list[str]) -> dict:
    """The OpenAPI request body of an endpoint taking the person-side inputs plus ``garments``."""
    multipart = {**{f: {**IMAGE_SCHEMA, "format": "binary"} for f in PERSON_FIELDS},
                 KEYPOINTS_FIELD: {**_KEYPOINTS, "type": "string"}}
    json_body = {**{f: JSON_IMAGE for f in PERSON_FIELDS},
                 KEYPOINTS_FIELD: {**_KEYPOINTS, "oneOf": [{"type": "object"}, {"type": "array"},
                                                           {"type": "string"}]}}
    return {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": required, "properties": {
            **multipart, **garments.get("multipart", {}), **_OPTIONS}}},
        "application/json": {"schema": {"type": "object", "required": required, "properties": {
            **json_body, **garments.get("json", {}), **_OPTIONS}}},
    }}


TRYON_OPENAPI = {
    "requestBody": person_request_body({"multipart": {"cloth": {**IMAGE_SCHEMA, "format": "binary"}},
                                        "json": {"cloth": JSON_IMAGE}}, ["cloth"]),
    "responses": {"200": {"description": "the try-on image, streamed",
                          "content": {m: {"schema": {"type": "string", "format": "binary"}}
                                      for m in MEDIA_TYPES.values()}}},
}


def require_ready(service: ServiceState) -> None:
    if not service.ready or service.batcher is None:
        raise ApiError(503, "not_ready", "the model is not loaded yet", headers={"Retry-After": "5"})


@dataclass
class Work:
    """A request about to queue work: its deadline and the timings it collects
    (shared with the access log through ``request.state``)."""
    deadline: float
    timings: dict[str, float]


async def begin_work(request: Request, service: ServiceState = Depends(get_service)) -> Work:
    """Dependency of the routes that run the model: ready or 503, deadline from now."""
    require_ready(service)
    work = Work(asyncio.get_running_loop().time() + service.settings.request_timeout_s, {})
    request.state.timings_ms = work.timings
    return work


def output_query(
        format: OutputFormat | None = Query(None, description="output format (jpeg)"),
        quality: int | None = Query(None, ge=1, le=100, description="JPEG/WebP quality (90)"),
        size: OutputSize | None = Query(None, description="model size, or the person image's original size (model)"),
) -> dict:
    """The output options given as query parameters; body fields of the same names win."""
    return {"format": format, "quality": quality, "size": size}


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
        job.abandon("client_gone")
        raise ClientGone
    job.abandon("deadline")
    raise ApiError(504, "deadline_exceeded", "the request was not served within its deadline "
                   f"({request.app.state.service.settings.request_timeout_s:g} s)")


async def read_parts(request: Request, service: ServiceState, query: dict, garments: Garments,
                     timings: dict[str, float]) -> tuple[RequestParts, OutputOptions]:
    """The request's parts with every URL fetched (``timings["fetch"]`` when there were any)."""
    mark = time.perf_counter()
    query = {k: v for k, v in query.items() if v is not None}
    parts, options = await read_request(request, service.settings, query, garments)
    if has_urls(parts):
        parts = await fetch_parts(parts, service.fetcher)
        timings["fetch"] = (time.perf_counter() - mark) * 1000
    return parts, options


async def run_job(service: ServiceState, inputs, deadline: float,
                  request: Request) -> JobResult | GarmentsStream | None:
    """Queues the work and waits for it; None when the client has gone (answer CLIENT_GONE)."""
    if asyncio.get_running_loop().time() >= deadline:
        raise ApiError(504, "deadline_exceeded", "the deadline passed before the request reached the queue")
    try:
        return await await_job(service.batcher.submit(inputs, deadline), request)
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


def _decode(parts, settings) -> tuple[PersonInputs, TryOnInputs]:
    person = decode_person(parts, settings)
    return person, decode_garment(person, parts.cloths[0], settings)


def encode_output(output, frame, options: OutputOptions) -> bytes:
    """One (3, H, W) result as image bytes, at model size or the person's original size."""
    return encode_image(output_image(output, frame, options.size), options.format, options.quality)


@tryon.post("/v1/tryon", summary="Dress the person in the cloth; the image comes back streamed",
            description=PERSON_MIX,
            response_class=Response, openapi_extra=TRYON_OPENAPI)
async def tryon_image(
        request: Request,
        service: ServiceState = Depends(get_service),
        work: Work = Depends(begin_work),
        query: dict = Depends(output_query),
) -> Response:
    """Options may also be sent as body fields of the same names, which win over the query."""
    deadline, timings = work.deadline, work.timings
    parts, options = await read_parts(request, service, query, "one", timings)
    mark = time.perf_counter()
    if isinstance(parts.cloths[0], ApiError):
        raise parts.cloths[0]
    person, inputs = await asyncio.to_thread(_decode, parts, service.settings)
    timings["decode"] = (time.perf_counter() - mark) * 1000
    person_headers = detection_report(person, timings, service.metrics)

    result = await run_job(service, inputs, deadline, request)
    if result is None:
        return Response(status_code=CLIENT_GONE)
    timings["queue"] = result.queue_s * 1000
    timings["inference"] = result.inference_s * 1000

    mark = time.perf_counter()
    body = await asyncio.to_thread(encode_output, result.output, inputs.person_frame, options)
    timings["encode"] = (time.perf_counter() - mark) * 1000
    headers = {"Server-Timing": server_timing(timings),
               "Content-Length": str(len(body)), "X-Batch-Size": str(result.batch_size),
               "Content-Disposition": f'inline; filename="tryon.{options.format}"'} | person_headers
    return StreamingResponse(_chunks(body), media_type=MEDIA_TYPES[options.format], headers=headers)
