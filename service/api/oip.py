"""The Open Inference Protocol (KServe's v2; Triton's HTTP and gRPC APIs), below both its front
doors: its documents as typed models, the try-on model's metadata, an ``infer`` request to and
from tensors, and ``infer`` itself, through the queue. May import what api/ may.

Tensors come as typed JSON (``data``: the values, flat in row-major order or nested) or,
with Triton's binary tensor extension, as raw bytes after the JSON header, whose length is
in ``Inference-Header-Content-Length``; each binary input says its byte count in
``parameters.binary_data_size``. Outputs go back as JSON or as bytes, per output
(``outputs[].parameters.binary_data``) or for all (``parameters.binary_data_output``).
The model, ``daflow``, takes ``masked_model``, ``pose`` and ``cloth`` as ``UINT8 [N, H, W, 3]``
at the model's size, pixel order RGB as in the images, and answers ``tryon``, the same.

Both protocols' front doors (HTTP: service/api/routes/v2.py; gRPC: service/api/grpc_server.py)
hand their tensors here as ``Tensor`` (bytes or values) and get one ``DecodedRequest`` back from
``decode_tensors``, the one check of names, datatypes, shapes and byte counts; each then runs it
through ``infer`` (the queue, as /v1/tryon). Everything a client can get wrong is an ``ApiError``
with a 4xx here (HTTP answers it in the protocol's ``{"error": "..."}``, gRPC as its status
code): for HTTP first the JSON header within model.safe_json's limits (its structure may hold
the values of every tensor a request may carry) and the binary tail against the header length.
Spec: https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/ and
https://github.com/triton-inference-server/server/blob/main/docs/protocol/extension_binary_data.md
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from model.images import Letterbox, TryOnInputs
from model.safe_json import MAX_STRUCTURE

from .. import tracing
from ..limits import byte_count
from ..queue.priority import Priority
from ..queue.work import WorkResult
from .deps import Ticket
from .errors import ApiError
from .inputs import read_json
from .options import parse_scheduling, validated
from .state import ServiceState
from .steps import queue_works

SERVER_NAME = "daflow-tryon"
MODEL_NAME = "daflow"
MODEL_VERSION = "1"
INPUT_NAMES = ("masked_model", "pose", "cloth")  # TryOnInputs' fields
OUTPUT_NAME = "tryon"
DATATYPE = "UINT8"
CHANNELS = 3  # RGB, pixel order
HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSIONS = ("binary_tensor_data",)
BINARY_MEDIA_TYPE = "application/octet-stream"
# Characters of JSON structure per uint8 value at most: "255," (model.safe_json counts
# what lies outside strings, so typed JSON tensors count in full).
CHARS_PER_VALUE = 4
# Triton's integer priorities (tritonclient's ``priority=``): 0 the default, 1 the highest.
TRITON_PRIORITIES = {1: Priority.INTERACTIVE}  # 2 and above: bulk
MICROSECONDS = 1e-6  # Triton's ``parameters.timeout`` unit


class _Document(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TensorMetadata(_Document):
    name: str
    datatype: str
    shape: list[int]


class ServerMetadata(_Document):
    name: str
    version: str
    extensions: list[str]


class ModelMetadata(_Document):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class RequestInput(_Document):
    name: str = Field(description=f"one of {', '.join(INPUT_NAMES)}")
    shape: list[int] = Field(description="[N, H, W, 3] at the model's size")
    datatype: str = Field(description=DATATYPE)
    parameters: dict[str, Any] | None = Field(None, description="binary_data_size: its bytes after the header")
    data: list | None = Field(None, description="the values, flat in row-major order or nested by the shape")


class RequestOutput(_Document):
    name: str = Field(description=OUTPUT_NAME)
    parameters: dict[str, Any] | None = Field(None, description="binary_data: true for raw bytes")


class InferRequest(_Document):
    id: str | None = None
    parameters: dict[str, Any] | None = Field(
        None, description="binary_data_output; priority: interactive or bulk, or Triton's integer (1 interactive, "
                          "2 and above bulk, 0 the default); timeout: microseconds, as Triton's client sends it")
    inputs: list[RequestInput] = Field(description=f"{', '.join(INPUT_NAMES)}, each once")
    outputs: list[RequestOutput] | None = None


class ResponseOutput(_Document):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = None
    data: list[int] | None = None


class InferResponse(_Document):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[ResponseOutput]


class ProtocolError(_Document):
    """The protocol's error body: the API's error code, then its message."""
    error: str = Field(description="`<code>: <message>`, the codes of the rest of the API")


def tensor_metadata(name: str, size_hw: tuple[int, int]) -> TensorMetadata:
    return TensorMetadata(name=name, datatype=DATATYPE, shape=[-1, *size_hw, CHANNELS])


def model_metadata(size_hw: tuple[int, int]) -> ModelMetadata:
    return ModelMetadata(name=MODEL_NAME, versions=[MODEL_VERSION], platform="pytorch",
                         inputs=[tensor_metadata(name, size_hw) for name in INPUT_NAMES],
                         outputs=[tensor_metadata(OUTPUT_NAME, size_hw)])


def check_model(name: str, version: str | None) -> None:
    """404 for a model or version this server does not serve."""
    if name != MODEL_NAME:
        raise ApiError(404, "unknown_model", f"no model {name[:64]!r} here; the one model is {MODEL_NAME!r}")
    if version is not None and version != MODEL_VERSION:
        raise ApiError(404, "unknown_model_version", f"{MODEL_NAME} has no version {version[:64]!r}; "
                       f"its one version is {MODEL_VERSION!r}")


def _invalid(message: str, field: str | None = None, code: str = "invalid_tensor") -> ApiError:
    return ApiError(400, code, message, field)


@dataclass(frozen=True)
class Tensor:
    """One input as either protocol carries it: its bytes (HTTP's binary extension; gRPC's
    ``raw_input_contents`` or ``bytes_contents``) or its values (HTTP's JSON ``data``, flat
    or nested; gRPC's ``uint_contents``). Both: the client sent two and is told so."""
    name: str
    datatype: str
    shape: Sequence[int]
    raw: bytes | memoryview | None = None
    values: Any = None


@dataclass(frozen=True)
class DecodedRequest:
    """An infer request as the queue takes it: one TryOnInputs per batch item, the outputs
    asked for (name -> binary), and the scheduling options as Scheduling fields."""
    id: str | None
    items: list[TryOnInputs]
    outputs: dict[str, bool]
    scheduling: dict[str, Any]


def _levels(tensor: Tensor, size_hw: tuple[int, int], max_batch_size: int) -> np.ndarray:
    """One input's (N, H, W, 3) uint8 values."""
    field = f"inputs.{tensor.name}"
    if tensor.datatype != DATATYPE:
        raise _invalid(f"datatype {tensor.datatype[:16]!r}; the model takes {DATATYPE}", field, "invalid_datatype")
    shape = list(tensor.shape)
    if len(shape) != 4 or shape[1:] != [*size_hw, CHANNELS] or not 1 <= shape[0] <= max_batch_size:
        raise _invalid(f"shape {shape[:8]}; the model takes [N, {size_hw[0]}, {size_hw[1]}, {CHANNELS}] with N "
                       f"from 1 to {max_batch_size} (TRYON_MAX_BATCH_SIZE)", field, "invalid_shape")
    count = math.prod(shape)
    if tensor.raw is not None:
        if tensor.values is not None:
            raise _invalid("has both bytes and typed values; send one", field)
        if len(tensor.raw) != count:
            raise _invalid(f"{len(tensor.raw)} bytes; shape {shape} of {DATATYPE} is {count} bytes", field,
                           "invalid_byte_size")
        return np.frombuffer(tensor.raw, np.uint8).reshape(shape)
    if tensor.values is None:
        raise _invalid("has no values: neither bytes nor typed values", field)
    try:
        values = np.asarray(tensor.values)
    except ValueError:  # ragged nesting
        raise _invalid("data is not a regular array of numbers", field) from None
    if values.dtype.kind not in "iu":
        raise _invalid(f"data must be integers from 0 to 255 ({DATATYPE})", field)
    if values.size != count:
        raise _invalid(f"data holds {values.size} values; shape {shape} holds {count}", field,
                       "invalid_byte_size")
    if values.size and (values.min() < 0 or values.max() > 255):
        raise _invalid(f"data must be integers from 0 to 255 ({DATATYPE})", field)
    return values.astype(np.uint8).reshape(shape)


def check_outputs(names: Sequence[str]) -> None:
    for name in names:
        if name != OUTPUT_NAME:
            raise _invalid(f"no output {name[:64]!r}; the model's one output is {OUTPUT_NAME!r}", "outputs",
                           "unknown_output")


def _scheduling(parameters: dict[str, Any]) -> dict[str, Any]:
    """``priority`` and ``timeout`` as Scheduling fields (validated there: a bad one is a 422
    ``invalid_option`` as everywhere in the API)."""
    options = {}
    priority = parameters.get("priority")
    if isinstance(priority, int) and not isinstance(priority, bool):
        options["priority"] = None if priority == 0 else TRITON_PRIORITIES.get(priority, Priority.BULK)
        if priority < 0:
            options["priority"] = priority  # refused by Scheduling
    elif priority is not None:
        options["priority"] = priority
    timeout = parameters.get("timeout")
    if isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
        options["timeout"] = timeout * MICROSECONDS
    elif timeout is not None:
        options["timeout"] = timeout
    return options


@tracing.traced("decode")
def decode_tensors(request_id: str | None, tensors: Sequence[Tensor], outputs: dict[str, bool],
                   parameters: dict[str, Any], size_hw: tuple[int, int], max_batch_size: int) -> DecodedRequest:
    """Either protocol's inputs as one TryOnInputs per batch item, at the model's size (the
    letterbox is the identity): every input once, each checked against the metadata."""
    by_name = {}
    for tensor in tensors:
        if tensor.name not in INPUT_NAMES:
            raise _invalid(f"no input {tensor.name[:64]!r}; the model takes {', '.join(INPUT_NAMES)}", "inputs",
                           "unknown_input")
        if tensor.name in by_name:
            raise _invalid(f"input {tensor.name!r} is given twice", "inputs", "duplicate_input")
        by_name[tensor.name] = tensor
    missing = [name for name in INPUT_NAMES if name not in by_name]
    if missing:
        raise _invalid(f"inputs {', '.join(missing)} are missing; the model takes {', '.join(INPUT_NAMES)}",
                       "inputs", "missing_input")
    levels = {tensor.name: _levels(tensor, size_hw, max_batch_size) for tensor in tensors}
    batch = {len(v) for v in levels.values()}
    if len(batch) != 1:
        raise _invalid(f"the inputs' first dimensions differ ({sorted(batch)}); one batch size for all", "inputs",
                       "invalid_shape")
    check_outputs(list(outputs))
    frame = Letterbox((size_hw[1], size_hw[0]), (size_hw[1], size_hw[0]))
    items = [TryOnInputs(**{name: torch.from_numpy(levels[name][i]).permute(2, 0, 1) for name in INPUT_NAMES},
                         person_frame=frame) for i in range(batch.pop())]
    return DecodedRequest(request_id, items, outputs, _scheduling(parameters))


def output_values(outputs: list[torch.Tensor]) -> np.ndarray:
    """The (3, H, W) uint8 results as the ``tryon`` output's (N, H, W, 3) values."""
    return torch.stack([o.permute(1, 2, 0) for o in outputs]).contiguous().numpy()


async def infer(service: ServiceState, ticket: Ticket, decoded: DecodedRequest, headers: Mapping[str, str],
                gone: Callable[[], Awaitable[None]] | None = None) -> list[WorkResult] | None:
    """The protocol's infer, whichever front door it came through: its items queued as /v1/tryon's
    are (each its own ``Work``: batched with everyone's, all or nothing), under the request's priority
    and timeout (``parameters``, else the X-Priority and X-Request-Timeout ``headers``); the
    results, or None when the client went (``gone``: steps.queue_works)."""
    ticket.schedule(parse_scheduling(decoded.scheduling, headers), Priority.INTERACTIVE)
    results = await queue_works(service, decoded.items, ticket, gone)
    if results is not None:
        ticket.timings["queue"] = max(r.queue_s for r in results) * 1000
        ticket.timings["inference"] = max(r.inference_s for r in results) * 1000
    return results


# The HTTP binding: a JSON header, perhaps binary tensors after it.


def _split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """(JSON header, binary tail): the header is the whole body without the extension."""
    if header_length is None:
        return body, memoryview(b"")
    length = byte_count(header_length)
    if length is None:  # ASCII digits only: "²" passed str.isdigit and failed int() (a 500)
        raise _invalid(f"{HEADER_LENGTH} must be a byte count, not {header_length[:32]!r}", HEADER_LENGTH,
                       "invalid_header_length")
    if length > len(body):
        raise _invalid(f"{HEADER_LENGTH} is {length}, past the body's {len(body)} bytes", HEADER_LENGTH,
                       "invalid_header_length")
    return body[:length], memoryview(body)[length:]


def _parse(header: bytes, size_hw: tuple[int, int], max_batch_size: int) -> InferRequest:
    values = max_batch_size * len(INPUT_NAMES) * math.prod(size_hw) * CHANNELS
    document = read_json(header, None, max_structure=MAX_STRUCTURE + CHARS_PER_VALUE * values)
    return validated(InferRequest, document, status=400, code="invalid_inference_request")


def _tensor(tensor: RequestInput, tail: memoryview, offset: int) -> tuple[Tensor, int]:
    """A JSON input as a Tensor, its bytes cut from the tail; the offset past them."""
    field = f"inputs.{tensor.name}"
    parameters = tensor.parameters or {}
    unknown = set(parameters) - {"binary_data_size"}
    if unknown:
        raise _invalid(f"parameters {sorted(unknown)} are not supported (only binary_data_size)", field,
                       "unsupported_parameter")
    if "binary_data_size" not in parameters:
        return Tensor(tensor.name, tensor.datatype, tensor.shape, values=tensor.data), offset
    size = parameters["binary_data_size"]
    if tensor.data is not None:
        raise _invalid("has both data and binary_data_size; send one", field)
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise _invalid(f"binary_data_size is {size!r}, not a byte count", field, "invalid_byte_size")
    if offset + size > len(tail):
        raise _invalid(f"its {size} bytes run past the body: {len(tail) - offset} are left after the "
                       f"header ({HEADER_LENGTH})", field, "invalid_byte_size")
    return Tensor(tensor.name, tensor.datatype, tensor.shape, raw=tail[offset:offset + size]), offset + size


def _outputs(request: InferRequest) -> dict[str, bool]:
    parameters = request.parameters or {}
    binary = parameters.get("binary_data_output", False)
    if not isinstance(binary, bool):
        raise _invalid("parameters.binary_data_output must be true or false", "parameters.binary_data_output",
                       "invalid_parameter")
    if request.outputs is None:
        return {OUTPUT_NAME: binary}
    check_outputs([output.name for output in request.outputs])
    asked = {}
    for output in request.outputs:
        wanted = (output.parameters or {}).get("binary_data", binary)
        unknown = set(output.parameters or {}) - {"binary_data"}
        if unknown or not isinstance(wanted, bool):
            raise _invalid(f"output parameters {sorted(unknown) or ['binary_data']}: only binary_data, true or "
                           "false", "outputs", "unsupported_parameter")
        asked[output.name] = wanted
    return asked


def decode_infer_request(body: bytes, header_length: str | None, size_hw: tuple[int, int],
                         max_batch_size: int) -> DecodedRequest:
    """An HTTP infer request's body (and its header length, if the binary extension is used):
    decode_tensors' answer."""
    header, tail = _split_body(body, header_length)
    request = _parse(header, size_hw, max_batch_size)
    tensors, offset = [], 0
    for tensor in request.inputs:  # the binary tail holds the tensors in the header's order
        decoded, offset = _tensor(tensor, tail, offset)
        tensors.append(decoded)
    if offset != len(tail):
        raise _invalid(f"{len(tail) - offset} bytes after the header are no input's (binary_data_size, "
                       f"{HEADER_LENGTH})", HEADER_LENGTH, "invalid_byte_size")
    return decode_tensors(request.id, tensors, _outputs(request), request.parameters or {}, size_hw,
                          max_batch_size)


@tracing.traced("encode")
def encode_infer_response(outputs: list[torch.Tensor], asked: dict[str, bool],
                          request_id: str | None) -> tuple[bytes, dict[str, str]]:
    """The (3, H, W) uint8 results as the ``tryon`` output, JSON or binary as asked: the body
    and its headers (with binary outputs, the header length and the octet-stream type)."""
    values = output_values(outputs)
    shape = list(values.shape)
    tails, documents = [], []
    for name, binary in asked.items():
        if binary:
            raw = values.tobytes()
            tails.append(raw)
            documents.append({"name": name, "datatype": DATATYPE, "shape": shape,
                              "parameters": {"binary_data_size": len(raw)}})
        else:
            documents.append({"name": name, "datatype": DATATYPE, "shape": shape, "data": values.reshape(-1).tolist()})
    response = {"model_name": MODEL_NAME, "model_version": MODEL_VERSION, "outputs": documents}
    if request_id is not None:
        response["id"] = request_id
    header = json.dumps(response, separators=(",", ":")).encode()
    if not tails:
        return header, {"Content-Type": "application/json"}
    return header + b"".join(tails), {"Content-Type": BINARY_MEDIA_TYPE, HEADER_LENGTH: str(len(header))}
