"""The Open Inference Protocol (KServe v2, Triton's HTTP API) beside /v1: health, metadata,
and ``infer``, which enters through the same queue as /v1/tryon (oip.infer: its batcher,
priorities, deadline and admission), behind the same API keys, counted in the same metrics.
The codec is service/api/oip.py; errors have the protocol's body (every route here is a
``ProtocolRoute``, and ``unmatched`` claims the paths under /v2 that none matches: service/api/errors.py)."""
from __future__ import annotations


from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import JSONResponse

from model.stopwatch import Stopwatch

from ..body import read_body
from ..deps import ServiceDep, Ticket, TicketDep, require_api_key
from ..errors import CLIENT_GONE, ProtocolRoute
from ..oip import (BINARY_MEDIA_TYPE, EXTENSIONS, HEADER_LENGTH, SERVER_NAME, ModelMetadata, ProtocolError,
                   ServerMetadata, check_model, decode_infer_request, encode_infer_response, model_metadata)
from ..oip import infer as run_infer
from ..state import ServiceState
from ..steps import client_gone, off_loop_unless, server_timing

LIVE_ROUTE, READY_ROUTE = "/v2/health/live", "/v2/health/ready"
MODEL_ROUTES = ("/v2/models/{model_name}", "/v2/models/{model_name}/versions/{model_version}")
INFER_ROUTES = tuple(f"{route}/infer" for route in MODEL_ROUTES)
# A small body's tensors are read on the event loop, a larger body's in a thread (routes/tryon.py's
# INLINE_DECODE_PIXEL_BYTES is the same choice for decoding images, which costs far more per byte).
INLINE_TENSOR_BYTES = 64 * 1024

health = APIRouter(tags=["v2 protocol"], route_class=ProtocolRoute)
models = APIRouter(tags=["v2 protocol", "try-on"], dependencies=[Depends(require_api_key)], route_class=ProtocolRoute)


def _no_route() -> None:
    raise HTTPException(404)


# The protocol's namespace: a path under /v2 that no route matches is a 404 in the protocol's body.
unmatched = ProtocolRoute("/v2/{path:path}", _no_route, include_in_schema=False)


def _errors(*statuses: int) -> dict:
    return {status: {"model": ProtocolError, "description": "the protocol's error body"} for status in statuses}


_STATE = {"content": {"application/json": {"schema": {"type": "object"}}}}


@health.get(LIVE_ROUTE, summary="Server live: the process answers and its device works",
            responses={200: _STATE, 503: _STATE})
async def server_live(service: ServiceDep) -> JSONResponse:
    return JSONResponse({"live": service.healthy}, status_code=200 if service.healthy else 503)


@health.get(READY_ROUTE, summary="Server ready: loaded, warm and not draining (as /readyz)",
            responses={200: _STATE, 503: _STATE})
async def server_ready(service: ServiceDep) -> JSONResponse:
    ready = service.info["ready"]
    return JSONResponse({"ready": ready}, status_code=200 if ready else 503)


@health.get("/v2", summary="Server metadata: name, version, protocol extensions")
async def server_metadata(request: Request) -> ServerMetadata:
    return ServerMetadata(name=SERVER_NAME, version=request.app.version, extensions=list(EXTENSIONS))


def _metadata(service: ServiceState, model_name: str, model_version: str | None) -> ModelMetadata:
    check_model(model_name, model_version)
    return model_metadata(service.settings.image_hw)


def _ready(service: ServiceState, model_name: str, model_version: str | None) -> JSONResponse:
    check_model(model_name, model_version)
    ready = service.info["ready"]
    return JSONResponse({"name": model_name, "ready": ready}, status_code=200 if ready else 503)


_METADATA = {"summary": "Model metadata: the inputs and output at the model's size", "responses": _errors(401, 404)}
_READY = {"summary": "Model ready: as the server (one model)", "responses": {**_errors(401, 404), 200: _STATE,
                                                                            503: _STATE}}


@models.get(MODEL_ROUTES[0], **_METADATA)
async def model_metadata_route(service: ServiceDep, model_name: str) -> ModelMetadata:
    return _metadata(service, model_name, None)


@models.get(MODEL_ROUTES[1], **_METADATA)
async def model_version_metadata(service: ServiceDep, model_name: str, model_version: str) -> ModelMetadata:
    return _metadata(service, model_name, model_version)


@models.get(f"{MODEL_ROUTES[0]}/ready", **_READY)
async def model_ready(service: ServiceDep, model_name: str) -> JSONResponse:
    return _ready(service, model_name, None)


@models.get(f"{MODEL_ROUTES[1]}/ready", **_READY)
async def model_version_ready(service: ServiceDep, model_name: str, model_version: str) -> JSONResponse:
    return _ready(service, model_name, model_version)


INFER_OPENAPI = {
    "parameters": [{"name": HEADER_LENGTH, "in": "header", "required": False,
                    "schema": {"type": "integer", "minimum": 0},
                    "description": "the binary tensor extension: the JSON header's length in bytes"}],
    "requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/InferRequest"}},
        BINARY_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary",
                                       "description": f"the JSON header ({HEADER_LENGTH} bytes), then the "
                                                      "binary inputs in its order"}}}},
    "responses": {"200": {"description": "the outputs: JSON, or with binary outputs the JSON header "
                                         f"({HEADER_LENGTH}) and then their bytes",
                          "content": {"application/json": {"schema": {"$ref": "#/components/schemas/InferResponse"}},
                                      BINARY_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}}}},
}
_INFER = {"summary": "Inference: masked_model, pose and cloth in, tryon out (batch N)", "response_class": Response,
          "openapi_extra": INFER_OPENAPI, "responses": _errors(400, 401, 404, 408, 413, 422, 500, 503, 504)}


@models.post(INFER_ROUTES[0], **_INFER)
async def infer(request: Request, service: ServiceDep, ticket: TicketDep, model_name: str) -> Response:
    return await _infer(request, service, ticket, model_name, None)


@models.post(INFER_ROUTES[1], **_INFER)
async def infer_version(request: Request, service: ServiceDep, ticket: TicketDep, model_name: str,
                        model_version: str) -> Response:
    return await _infer(request, service, ticket, model_name, model_version)


async def _infer(request: Request, service: ServiceState, ticket: Ticket, model_name: str,
                 model_version: str | None) -> Response:
    check_model(model_name, model_version)
    settings = service.settings
    timings = ticket.timings
    body = await read_body(request, settings.request_body_limit, settings.request_timeout_s)
    clock = Stopwatch()
    decoded = await off_loop_unless(len(body) <= INLINE_TENSOR_BYTES, decode_infer_request, body,
                                    request.headers.get(HEADER_LENGTH), settings.image_hw,
                                    settings.max_batch_size)
    timings["decode"] = clock.elapsed_ms
    results = await run_infer(service, ticket, decoded, request.headers, client_gone(request))
    if results is None:
        return Response(status_code=CLIENT_GONE)
    clock = Stopwatch()
    content, headers = await off_loop_unless(len(results) == 1, encode_infer_response,
                                             [r.output for r in results], decoded.outputs, decoded.id)
    timings["encode"] = clock.elapsed_ms
    headers |= {"Server-Timing": server_timing(timings),
                "X-Batch-Size": ",".join(str(r.batch_size) for r in results)}
    return Response(content, headers=headers)
