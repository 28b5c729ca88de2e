"""The Open Inference Protocol over gRPC: KServe v2's and Triton's ``inference.GRPCInferenceService``
on TRYON_GRPC_PORT, beside the HTTP app in the same event loop (so the same queue, limits and keys).

Each RPC is a few lines over service/api/oip.py, as the HTTP routes (routes/v2.py) are: ServerLive,
ServerReady, ServerMetadata (open, as their HTTP paths), ModelReady, ModelMetadata and ModelInfer
(behind TRYON_API_KEYS: metadata ``authorization: Bearer KEY`` or ``x-api-key: KEY``). ModelInfer
takes ``raw_input_contents`` (one per input, in their order: what tritonclient sends) or typed
contents (``uint_contents``, or ``bytes_contents`` holding the raw bytes) and answers in
``raw_output_contents``; ``parameters`` priority and timeout (microseconds) as over HTTP; a call's
gRPC deadline shortens its own. A failure is the service's answer mapped once to a status code
(api/errors.py GRPC_STATUS), its details the protocol's ``<code>: <message>``, Retry-After as the
trailing metadata ``retry-after``. A message over the body limit (Settings.request_body_limit) is
refused by grpc itself (RESOURCE_EXHAUSTED).

Under TRYON_WORKERS > 1 every front end binds the port with SO_REUSEPORT (the supervisor first
checks that no other server holds it), as their HTTP sockets share theirs. SIGTERM: no new calls,
the calls in hand finish within TRYON_DRAIN_TIMEOUT_S (``server.stop(grace)``), then the queue stops.

Imported only when TRYON_GRPC_PORT is set (service/api/app.py): grpcio and tritonclient's stubs
(``tritonclient.grpc.service_pb2``) are needed then only. May import what api/ may.
"""
from __future__ import annotations

import asyncio
import functools
import logging

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb, service_pb2_grpc as pb_grpc

from model.stopwatch import Stopwatch

from .. import tracing
from .deps import check_api_key, start_ticket
from .errors import CLIENT_GONE, ApiError, as_api_error, grpc_status, protocol_message
from .oip import (DATATYPE, INPUT_NAMES, MODEL_NAME, MODEL_VERSION, OUTPUT_NAME, SERVER_NAME, DecodedRequest, Tensor,
                  check_model, decode_tensors, infer, model_metadata, output_values)
from .state import ServiceState
from .steps import off_loop_unless

log = logging.getLogger("service.grpc")
INFER_ROUTE = "/inference.GRPCInferenceService/ModelInfer"  # the metrics' route label, as HTTP's paths
INLINE_TENSOR_BYTES = 64 * 1024  # as routes/v2.py: a larger request is decoded in a thread
RETRY_AFTER = "retry-after"


def _parameters(parameters) -> dict:
    """A map of InferParameter as plain values (oip._scheduling reads priority and timeout)."""
    return {key: getattr(value, value.WhichOneof("parameter_choice")) for key, value in parameters.items()
            if value.WhichOneof("parameter_choice") is not None}


def _tensors(request: pb.ModelInferRequest) -> list[Tensor]:
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise ApiError(400, "invalid_byte_size", f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs: "
                       "one each, in the inputs' order", "raw_input_contents")
    tensors = []
    for i, tensor in enumerate(request.inputs):
        field = f"inputs.{tensor.name}"
        if tensor.parameters:
            raise ApiError(400, "unsupported_parameter", f"parameters {sorted(tensor.parameters)[:4]} are not "
                           "supported", field)
        contents = tensor.contents
        typed = [f.name for f, _ in contents.ListFields()]
        if set(typed) - {"uint_contents", "bytes_contents"}:
            raise ApiError(400, "invalid_tensor", f"{DATATYPE} values come raw, in uint_contents or in "
                           f"bytes_contents, not in {', '.join(typed)}", field)
        data = b"".join(contents.bytes_contents) if contents.bytes_contents else None
        if raw:
            if data is not None:
                raise ApiError(400, "invalid_tensor", "has both raw_input_contents and bytes_contents; send one",
                               field)
            data = raw[i]
        values = np.array(contents.uint_contents, dtype=np.int64) if contents.uint_contents else None
        tensors.append(Tensor(tensor.name, tensor.datatype, list(tensor.shape), data, values))
    return tensors


def decode_request(request: pb.ModelInferRequest, size_hw: tuple[int, int], max_batch_size: int) -> DecodedRequest:
    """A ModelInferRequest as oip.decode_tensors decodes both protocols' (outputs always raw)."""
    outputs = {output.name: True for output in request.outputs} or {OUTPUT_NAME: True}
    return decode_tensors(request.id or None, _tensors(request), outputs, _parameters(request.parameters), size_hw,
                          max_batch_size)


@tracing.traced("encode")
def encode_response(outputs: list, decoded: DecodedRequest) -> pb.ModelInferResponse:
    """The results as the ``tryon`` output, raw, once for each output asked for."""
    values = output_values(outputs)
    output = pb.ModelInferResponse.InferOutputTensor(name=OUTPUT_NAME, datatype=DATATYPE, shape=values.shape)
    return pb.ModelInferResponse(model_name=MODEL_NAME, model_version=MODEL_VERSION, id=decoded.id or "",
                                 outputs=[output] * len(decoded.outputs),
                                 raw_output_contents=[values.tobytes()] * len(decoded.outputs))


def _rpc(keyed: bool, route: str | None = None):
    """An RPC's frame: the API key (``keyed``), every failure as its status code, and for ``route``
    the metrics and the access log line HTTP's middleware writes."""
    def wrap(method):
        @functools.wraps(method)
        async def call(self: "Servicer", request, context: grpc.aio.ServicerContext):
            clock, outcome, status, timings = Stopwatch(), "ok", 200, {}
            metadata = dict(context.invocation_metadata())
            # The caller's traceparent in the metadata, as HTTP's middleware honours the header.
            with tracing.request(method.__name__, metadata) as span:
                try:
                    if keyed:
                        check_api_key(self.service.settings, metadata)
                    return await (method(self, request, context, timings) if route else method(self, request, context))
                except asyncio.CancelledError:  # the client cancelled, or went: its work was abandoned
                    outcome, status = "client_gone", CLIENT_GONE
                    raise
                except Exception as exc:  # every failure, bugs too (a 500 here: logged, nothing of it sent)
                    error = as_api_error(exc)
                    if error is None:
                        log.exception("unhandled error", extra={"rpc": method.__name__})
                        error = ApiError(500, "internal", "internal server error")
                    outcome, status = error.code, error.status
                    retry = error.headers.get("Retry-After")
                    await context.abort(grpc.StatusCode[grpc_status(error)], protocol_message(error),
                                        ((RETRY_AFTER, retry),) if retry else ())
                finally:
                    tracing.finish_request(span, f"grpc {method.__name__}", status)
                    if route is not None:
                        self._record(route, outcome, clock.elapsed, timings)
        return call
    return wrap


class Servicer(pb_grpc.GRPCInferenceServiceServicer):
    """The RPCs the service answers; the others (repository, shared memory, statistics, streaming)
    answer UNIMPLEMENTED (_unimplemented)."""

    def __init__(self, service: ServiceState, version: str):
        self.service = service
        self.version = version

    @_rpc(keyed=False)
    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=self.service.healthy)

    @_rpc(keyed=False)
    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.service.info["ready"])

    @_rpc(keyed=False)
    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=self.version)

    @_rpc(keyed=True)
    async def ModelReady(self, request, context):
        check_model(request.name, request.version or None)
        return pb.ModelReadyResponse(ready=self.service.info["ready"])

    @_rpc(keyed=True)
    async def ModelMetadata(self, request, context):
        check_model(request.name, request.version or None)
        metadata = model_metadata(self.service.settings.image_hw)
        tensors = [pb.ModelMetadataResponse.TensorMetadata(**t.model_dump()) for t in metadata.inputs]
        return pb.ModelMetadataResponse(
            name=metadata.name, versions=metadata.versions, platform=metadata.platform, inputs=tensors,
            outputs=[pb.ModelMetadataResponse.TensorMetadata(**t.model_dump()) for t in metadata.outputs])

    @_rpc(keyed=True, route=INFER_ROUTE)
    async def ModelInfer(self, request, context, timings: dict[str, float]):
        check_model(request.model_name, request.model_version or None)
        service, settings = self.service, self.service.settings
        ticket = start_ticket(service)
        ticket.timings = timings
        remaining = context.time_remaining()
        if remaining is not None:  # the client's own deadline, when it is sooner
            ticket.deadline = min(ticket.deadline, ticket.arrived + remaining)
        hold = service.budget.hold()
        try:
            size = request.ByteSize()
            hold.take(size, "the request message")
            clock = Stopwatch()
            decoded = await off_loop_unless(size <= INLINE_TENSOR_BYTES, decode_request, request,
                                            settings.image_hw, settings.max_batch_size)
            timings["decode"] = clock.elapsed_ms
            results = await infer(service, ticket, decoded, {})
        finally:
            hold.release()
        clock = Stopwatch()
        response = encode_response([r.output for r in results], decoded)
        timings["encode"] = clock.elapsed_ms
        return response

    def _record(self, route: str, outcome: str, seconds: float, timings: dict[str, float]) -> None:
        metrics = self.service.metrics
        if outcome != "ok":
            metrics.rejected.labels(outcome).inc()
        metrics.observe_request(route, seconds, None if outcome == "ok" else outcome)
        fields = {"rpc": route, "status": outcome, "duration_ms": round(seconds * 1000, 2)}
        if timings:
            fields["timings_ms"] = {stage: round(ms, 2) for stage, ms in timings.items()}
        log.info("request", extra=fields)


async def _unimplemented(self, request, context: grpc.aio.ServicerContext):
    """The stubs' own answer (a sync method raising NotImplementedError) would run in a thread and
    log a traceback for every such call: a client's question, not the server's failure."""
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"not served here; the model is {MODEL_NAME!r}")


for _name in dir(pb_grpc.GRPCInferenceServiceServicer):
    if not _name.startswith("_") and _name not in Servicer.__dict__:
        setattr(Servicer, _name, _unimplemented)


class GrpcServer:
    """A grpc.aio server on TRYON_GRPC_PORT in this process's event loop: ``start`` once the
    service has started, ``drain`` on SIGTERM (ServiceState.on_drain), ``stop`` before the
    service stops."""

    def __init__(self, service: ServiceState, version: str):
        settings = service.settings
        self.service = service
        self.grace_s = settings.drain_timeout_s
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        self.address = f"{host}:{settings.grpc_port}"
        options = [("grpc.max_receive_message_length", settings.request_body_limit),
                   # A front end of TRYON_WORKERS > 1 shares the port with the others; one process alone
                   # must fail to start on a port another server holds (grpc turns SO_REUSEPORT on by default).
                   ("grpc.so_reuseport", int(service.engine_link is not None))]
        self.server = grpc.aio.server(options=options, maximum_concurrent_rpcs=settings.max_connections)
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(service, version), self.server)
        self._stopping: asyncio.Future | None = None

    async def start(self) -> None:
        try:
            bound = self.server.add_insecure_port(self.address)
        except RuntimeError:  # (grpc raises where older versions returned 0)
            bound = 0
        if bound == 0:
            raise RuntimeError(f"the gRPC port could not be bound: {self.address} (TRYON_GRPC_PORT); is another "
                               "server on it?")
        await self.server.start()
        self.service.on_drain.append(self.drain)
        log.info("gRPC serving", extra={"address": self.address, "inputs": list(INPUT_NAMES)})

    def drain(self) -> None:
        """No new calls from now; the calls in hand have TRYON_DRAIN_TIMEOUT_S to finish."""
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self.server.stop(self.grace_s))

    async def stop(self) -> None:
        self.drain()
        await self._stopping
