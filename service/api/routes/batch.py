"""POST /v1/tryon/batch: one person, many garments, each result streamed back.

The person is read, drawn if need be, and encoded by the network once for
the whole request: the garments go to the worker as one ``Work``
(``Engine.iter_garments``), which takes one place in the queue and keeps
the request's deadline. The answer starts once the first chunk of garments
is dressed (so a failure before that is an ordinary error answer); then the
parts go out in input order, each as soon as its chunk is done. A garment
that cannot be read or fetched becomes an error part in its place; the
others are still dressed.
"""
from __future__ import annotations

import asyncio
import json
from contextlib import aclosing

import torch
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse

from model.images import MEDIA_TYPES
from model.stopwatch import Stopwatch

from ...codec.output import encode_output
from ...codec.person import decode_garments, decode_person, person_report
from ...queue.work import GarmentsInputs, GarmentsStream
from ...queue.outcomes import QueueError
from ...queue.priority import Priority
from ..cache import CachedResponse
from ..deps import QueryDep, ServiceDep, TicketDep, require_api_key
from ..errors import CLIENT_GONE, ApiError, from_queue_error
from ..openapi import GARMENTS_REQUEST_BODY, MODEL_ERRORS, PERSON_MIX, binary_content, error_responses
from ..answers import NDJSON, AnswerItem, MultipartMixed, accepts, json_item
from ..steps import read_parts, run_work, server_timing

batch = APIRouter(tags=["try-on"], dependencies=[Depends(require_api_key)])
BATCH_ROUTE = "/v1/tryon/batch"

BATCH_OPENAPI = {
    "requestBody": GARMENTS_REQUEST_BODY,
    "responses": {"200": {"description": "one part per garment, in input order, each with its index: "
                                         "multipart/mixed (default) or NDJSON (Accept: application/x-ndjson)",
                          "content": binary_content("multipart/mixed", NDJSON)}},
}
BATCH_DESCRIPTION = PERSON_MIX + (
    " Garments: `cloth` repeated (multipart) or `cloths` (JSON list), at most TRYON_MAX_GARMENTS. Parts come "
    "in input order, each carrying its index (`X-Index`, or `index`) and its chunk's engine time "
    "(`X-Inference-Ms`, or `inference_ms`), each sent as soon as its chunk of garments is dressed; a garment "
    "that could not be read is an error part (`X-Status`, or `status` + `error`) and does not stop the others.")


@batch.post(BATCH_ROUTE, summary="Dress one person in many garments; results streamed, one part each",
            description=BATCH_DESCRIPTION, response_class=Response, openapi_extra=BATCH_OPENAPI,
            responses=error_responses(*MODEL_ERRORS))
async def tryon_garments(request: Request, service: ServiceDep, ticket: TicketDep, query: QueryDep) -> Response:
    settings = service.settings
    timings = ticket.timings
    # A many-garments request is bulk work unless it says otherwise.
    parts, options = await read_parts(request, service, query, "many", timings, ticket, Priority.BULK)
    clock = Stopwatch()
    person = await asyncio.to_thread(decode_person, parts, settings, options.size == "original")
    garments = await asyncio.to_thread(decode_garments, person, parts.cloths, settings)
    timings["decode"] = clock.elapsed_ms
    person_headers = person_report(person, timings, service.metrics)
    usable = [i for i, g in enumerate(garments) if not isinstance(g, ApiError)]
    if not usable:  # nothing to dress: fail like /v1/tryon would
        raise garments[0]

    cache, keys, cached = service.cache, {}, {}
    if cache is not None:  # each garment is looked up as its own /v1/tryon would be
        clock = Stopwatch()
        keys = await asyncio.to_thread(lambda: {i: cache.key(garments[i], options) for i in usable})
        found = await asyncio.gather(*(cache.lookup(keys[i], BATCH_ROUTE) for i in usable))
        cached = {i: hit for i, hit in zip(usable, found) if hit is not None}
        timings["cache"] = clock.elapsed_ms
    to_run = [i for i in usable if i not in cached]

    chunk_size = settings.garment_chunk_for(service.engine.device.type)
    stream: GarmentsStream | None = None
    if to_run:
        stream = await run_work(service, GarmentsInputs.of([garments[i] for i in to_run], chunk_size), ticket,
                                request)
        if stream is None:
            return Response(status_code=CLIENT_GONE)
        timings["queue"] = stream.queue_s * 1000
    position = {index: at for at, index in enumerate(to_run)}  # input index -> place in the Work

    async def results():
        chunks = stream.chunks() if stream is not None else None
        ready: dict[int, tuple[torch.Tensor, float]] = {}  # place in the Work -> (output, chunk seconds)
        failure: ApiError | None = None
        try:
            for index, garment in enumerate(garments):
                if isinstance(garment, ApiError):
                    yield AnswerItem.failed("result", garment, index)
                    continue
                if index in cached:
                    hit = cached[index]
                    yield AnswerItem("result", hit.media_type, hit.body, index, timings_ms={"cache": timings["cache"]})
                    continue
                while position[index] not in ready and failure is None:
                    item = await anext(chunks)
                    if isinstance(item, QueueError):
                        failure = from_queue_error(item)
                    else:
                        ready |= {item.start + k: (out, item.inference_s) for k, out in enumerate(item.outputs)}
                if failure is not None and position[index] not in ready:
                    yield AnswerItem.failed("result", failure, index)
                    continue
                output, inference_s = ready.pop(position[index])
                clock = Stopwatch()
                body = await asyncio.to_thread(encode_output, output, person.output_frame, options)
                item_timings = {"inference": inference_s * 1000, "encode": clock.elapsed_ms}
                if cache is not None:
                    cache.remember(keys[index], CachedResponse(MEDIA_TYPES[options.format], body))
                yield AnswerItem("result", MEDIA_TYPES[options.format], body, index, timings_ms=item_timings)
        finally:
            if stream is not None:
                stream.close()
                await chunks.aclose()

    headers = {"Server-Timing": server_timing(timings), "X-Batch-Size": str(len(to_run)),
               "X-Garments": str(len(garments)), "X-Garment-Chunk": str(chunk_size),
               "X-Accel-Buffering": "no"} | person_headers  # a proxy in front passes each part on at once
    if cache is not None:  # hit: every garment came from the cache and nothing was queued
        headers |= {"X-Cache": "hit" if not to_run else "miss", "X-Cache-Hits": str(len(cached))}
    if accepts(request, NDJSON):
        async def lines():
            async with aclosing(results()) as answer_items:
                async for item in answer_items:
                    yield (json.dumps(json_item(item)) + "\n").encode()
        return StreamingResponse(lines(), media_type=NDJSON, headers=headers)

    framing = MultipartMixed()

    async def multipart():
        async with aclosing(results()) as answer_items:
            async for item in answer_items:
                yield framing.item(item)
        yield framing.end()
    return StreamingResponse(multipart(), media_type=framing.media_type, headers=headers)
