"""POST /v1/tryon: one person in one garment; the image comes back streamed."""
from __future__ import annotations


from fastapi import APIRouter, Depends, Request, Response

from model.images import MEDIA_TYPES, TryOnInputs
from model.person import PersonInputs
from model.stopwatch import Stopwatch

from ...codec.output import OutputOptions, encode_output
from ...codec.person import decode_garment, decode_person, person_report
from ...codec.sources import RequestParts
from ... import tracing
from ...queue.priority import Priority
from ..cache import CachedResponse, ResponseCache
from ..deps import QueryDep, ServiceDep, TicketDep, require_api_key
from ..errors import CLIENT_GONE, ApiError
from ..openapi import BINARY, IMAGE_SCHEMA, JSON_IMAGE, MODEL_ERRORS, PERSON_MIX, binary_content, error_responses, \
    person_request_body
from ..steps import image_response, off_loop_unless, read_parts, run_work
from ..state import ServiceState

TRYON_ROUTE = "/v1/tryon"
# Short CPU work runs on the event loop: handing it to a thread and back cost more server CPU
# than the work itself (measured, docs/scaling.md). Long work (a person photo's detection, many
# pixels, big outputs) still goes to a thread, so the loop is never held for long. Pixels decide,
# not bytes as sent: 78 kB of PNG can hold 40 million 16-bit pixels (seconds of decoding).
INLINE_DECODE_PIXEL_BYTES = 8 << 20  # what decoding holds, as the headers say (HeaderPixels.decode_bytes)
INLINE_ENCODE_PIXELS = 1 << 20

tryon = APIRouter(tags=["try-on"], dependencies=[Depends(require_api_key)])

TRYON_OPENAPI = {
    "requestBody": person_request_body({"multipart": {"cloth": {**IMAGE_SCHEMA, **BINARY}},
                                        "json": {"cloth": JSON_IMAGE}}),
    "responses": {"200": {"description": "the try-on image, streamed", "content": binary_content(*MEDIA_TYPES.values())}},
}


def short_decode(parts: RequestParts) -> bool:
    """A masked model and pose map as they are (letterboxed, nothing drawn or detected) and a
    garment, whose headers say decoding them takes at most INLINE_DECODE_PIXEL_BYTES."""
    return set(parts.given) == {"masked_model", "pose"} and parts.decode_bytes <= INLINE_DECODE_PIXEL_BYTES


@tracing.traced("decode")
def _decode(parts: RequestParts, service: ServiceState,
            options: OutputOptions) -> tuple[PersonInputs, TryOnInputs, str | None]:
    """What the model sees, and its cache key (a hit's time is mostly this)."""
    person = decode_person(parts, service.settings, keep_photo=options.size == "original")
    inputs = decode_garment(person, parts.cloths[0], service.settings)
    cache: ResponseCache | None = service.cache
    return person, inputs, cache.key(inputs, options) if cache is not None else None


@tryon.post(TRYON_ROUTE, summary="Dress the person in the cloth; the image comes back streamed",
            description=PERSON_MIX,
            response_class=Response, openapi_extra=TRYON_OPENAPI, responses=error_responses(*MODEL_ERRORS))
async def tryon_image(request: Request, service: ServiceDep, ticket: TicketDep, query: QueryDep) -> Response:
    """Options may also be sent as body fields of the same names, which win over the query."""
    timings = ticket.timings
    parts, options = await read_parts(request, service, query, "one", timings, ticket, Priority.INTERACTIVE)
    clock = Stopwatch()
    if isinstance(parts.cloths[0], ApiError):
        raise parts.cloths[0]
    cache = service.cache
    person, inputs, key = await off_loop_unless(short_decode(parts), _decode, parts, service, options)
    timings["decode"] = clock.elapsed_ms
    person_headers = person_report(person, timings, service.metrics)

    if cache is not None:
        clock = Stopwatch()
        cached = await cache.lookup(key, TRYON_ROUTE)
        timings["cache"] = clock.elapsed_ms
        if cached is not None:  # answered without queueing, whatever the queue holds
            return image_response(cached.body, cached.media_type, options, timings,
                                  {"X-Cache": "hit"} | person_headers)

    result = await run_work(service, inputs, ticket, request)
    if result is None:
        return Response(status_code=CLIENT_GONE)
    timings["queue"] = result.queue_s * 1000
    timings["inference"] = result.inference_s * 1000

    clock = Stopwatch()
    source_w, source_h = inputs.person_frame.source_size_wh
    short = options.size == "model" or source_w * source_h <= INLINE_ENCODE_PIXELS
    body = await off_loop_unless(short, encode_output, result.output, inputs.person_frame, options)
    timings["encode"] = clock.elapsed_ms
    media_type = MEDIA_TYPES[options.format]
    headers = {"X-Batch-Size": str(result.batch_size)} | person_headers
    if cache is not None:
        cache.remember(key, CachedResponse(media_type, body))
        headers["X-Cache"] = "miss"
    return image_response(body, media_type, options, timings, headers)
