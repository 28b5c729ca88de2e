"""The Open Inference Protocol's codec (KServe's v2, Triton's HTTP API): its documents as
typed models, the try-on model's metadata, and an ``infer`` request to and from tensors.

Tensors come as typed JSON (``data``: the values, flat in row-major order or nested) or,
with Triton's binary tensor extension, as raw bytes after the JSON header, whose length is
in ``Inference-Header-Content-Length``; each binary input says its byte count in
``parameters.binary_data_size``. Outputs go back as JSON or as bytes, per output
(``outputs[].parameters.binary_data``) or for all (``parameters.binary_data_output``).
The model, ``daflow``, takes ``masked_model``, ``pose`` and ``cloth`` as ``UINT8 [N, H, W, 3]``
at the model's size, pixel order RGB as in the images, and answers ``tryon``, the same.

Everything a client can get wrong is an ``ApiError`` with a 4xx here (the routes answer
it in the protocol's ``{"error": "..."}``): the JSON header within model.safe_json's limits
(its structure may hold the values of every tensor a request may carry), then every
tensor's name, datatype, shape and byte count against the metadata and the header length.
Spec: https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/ and
https://github.com/triton-inference-server/server/blob/main/docs/protocol/extension_binary_data.md
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from model.images import Letterbox, TryOnInputs
from model.safe_json import MAX_STRUCTURE

from .. import tracing
from ..limits import byte_count
from ..queue.outcomes import Priority
from .errors import ApiError
from .inputs import read_json

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
    shape: list[int] = Field(min_length=4, max_length=4, description="[N, H, W, 3] at the model's size")
    datatype: Literal["UINT8"]
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
    inputs: list[RequestInput] = Field(min_length=len(INPUT_NAMES), max_length=len(INPUT_NAMES))
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
class DecodedRequest:
    """An infer request as the queue takes it: one TryOnInputs per batch item, the outputs
    asked for (name -> binary), and the scheduling options as JobOptions fields."""
    id: str | None
    items: list[TryOnInputs]
    outputs: dict[str, bool]
    scheduling: dict[str, Any]


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
    try:
        return InferRequest.model_validate(document)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ApiError(400, "invalid_inference_request", f"{first['msg']} ({where or 'the request'})",
                       where or None) from None


def _levels(tensor: RequestInput, size_hw: tuple[int, int], max_batch_size: int, tail: memoryview,
            offset: int) -> tuple[np.ndarray, int]:
    """One input's (N, H, W, 3) uint8 values, and the offset past its bytes in the tail."""
    field = f"inputs.{tensor.name}"
    n, *rest = tensor.shape
    if rest != [*size_hw, CHANNELS] or not 1 <= n <= max_batch_size:
        raise _invalid(f"shape {tensor.shape}; the model takes [N, {size_hw[0]}, {size_hw[1]}, {CHANNELS}] with N "
                       f"from 1 to {max_batch_size} (TRYON_MAX_BATCH_SIZE)", field, "invalid_shape")
    count = math.prod(tensor.shape)
    parameters = tensor.parameters or {}
    unknown = set(parameters) - {"binary_data_size"}
    if unknown:
        raise _invalid(f"parameters {sorted(unknown)} are not supported (only binary_data_size)", field,
                       "unsupported_parameter")
    if "binary_data_size" in parameters:
        size = parameters["binary_data_size"]
        if tensor.data is not None:
            raise _invalid("has both data and binary_data_size; send one", field)
        if isinstance(size, bool) or not isinstance(size, int) or size != count:
            raise _invalid(f"binary_data_size is {size!r}; shape {tensor.shape} of {DATATYPE} is {count} bytes",
                           field, "invalid_byte_size")
        if offset + size > len(tail):
            raise _invalid(f"its {size} bytes run past the body: {len(tail) - offset} are left after the "
                           f"header ({HEADER_LENGTH})", field, "invalid_byte_size")
        return np.frombuffer(tail[offset:offset + size], np.uint8).reshape(tensor.shape), offset + size
    if tensor.data is None:
        raise _invalid("has neither data nor binary_data_size", field)
    try:
        values = np.asarray(tensor.data)
    except ValueError:  # ragged nesting
        raise _invalid("data is not a regular array of numbers", field) from None
    if values.dtype.kind not in "iu":
        raise _invalid(f"data must be integers from 0 to 255 ({DATATYPE})", field)
    if values.size != count:
        raise _invalid(f"data holds {values.size} values; shape {tensor.shape} holds {count}", field,
                       "invalid_byte_size")
    if values.size and (values.min() < 0 or values.max() > 255):
        raise _invalid(f"data must be integers from 0 to 255 ({DATATYPE})", field)
    return values.astype(np.uint8).reshape(tensor.shape), offset


def _outputs(request: InferRequest) -> dict[str, bool]:
    parameters = request.parameters or {}
    binary = parameters.get("binary_data_output", False)
    if not isinstance(binary, bool):
        raise _invalid("parameters.binary_data_output must be true or false", "parameters.binary_data_output",
                       "invalid_parameter")
    if request.outputs is None:
        return {OUTPUT_NAME: binary}
    asked = {}
    for output in request.outputs:
        if output.name != OUTPUT_NAME:
            raise _invalid(f"no output {output.name[:64]!r}; the model's one output is {OUTPUT_NAME!r}",
                           "outputs", "unknown_output")
        wanted = (output.parameters or {}).get("binary_data", binary)
        unknown = set(output.parameters or {}) - {"binary_data"}
        if unknown or not isinstance(wanted, bool):
            raise _invalid(f"output parameters {sorted(unknown) or ['binary_data']}: only binary_data, true or "
                           "false", "outputs", "unsupported_parameter")
        asked[output.name] = wanted
    return asked


def _scheduling(parameters: dict[str, Any]) -> dict[str, Any]:
    """``priority`` and ``timeout`` as JobOptions fields (validated there: a bad one is a 422
    ``invalid_option`` as everywhere in the API)."""
    options = {}
    priority = parameters.get("priority")
    if isinstance(priority, int) and not isinstance(priority, bool):
        options["priority"] = None if priority == 0 else TRITON_PRIORITIES.get(priority, Priority.BULK)
        if priority < 0:
            options["priority"] = priority  # refused by JobOptions
    elif priority is not None:
        options["priority"] = priority
    timeout = parameters.get("timeout")
    if isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
        options["timeout"] = timeout * MICROSECONDS
    elif timeout is not None:
        options["timeout"] = timeout
    return options


@tracing.traced("decode")
def decode_infer_request(body: bytes, header_length: str | None, size_hw: tuple[int, int],
                         max_batch_size: int) -> DecodedRequest:
    """An infer request's body (and its header length, if the binary extension is used) as
    one TryOnInputs per batch item, at the model's size (the letterbox is the identity)."""
    header, tail = _split_body(body, header_length)
    request = _parse(header, size_hw, max_batch_size)
    by_name = {}
    for tensor in request.inputs:
        if tensor.name not in INPUT_NAMES:
            raise _invalid(f"no input {tensor.name[:64]!r}; the model takes {', '.join(INPUT_NAMES)}", "inputs",
                           "unknown_input")
        if tensor.name in by_name:
            raise _invalid(f"input {tensor.name!r} is given twice", "inputs", "duplicate_input")
        by_name[tensor.name] = tensor
    offset, levels = 0, {}
    for tensor in request.inputs:  # the binary tail holds the tensors in the header's order
        levels[tensor.name], offset = _levels(tensor, size_hw, max_batch_size, tail, offset)
    if offset != len(tail):
        raise _invalid(f"{len(tail) - offset} bytes after the header are no input's (binary_data_size, "
                       f"{HEADER_LENGTH})", HEADER_LENGTH, "invalid_byte_size")
    batch = {len(v) for v in levels.values()}
    if len(batch) != 1:
        raise _invalid(f"the inputs' first dimensions differ ({sorted(batch)}); one batch size for all", "inputs",
                       "invalid_shape")
    outputs = _outputs(request)
    frame = Letterbox((size_hw[1], size_hw[0]), (size_hw[1], size_hw[0]))
    items = [TryOnInputs(**{name: torch.from_numpy(levels[name][i]).permute(2, 0, 1) for name in INPUT_NAMES},
                         person_frame=frame) for i in range(batch.pop())]
    return DecodedRequest(request.id, items, outputs, _scheduling(request.parameters or {}))


@tracing.traced("encode")
def encode_infer_response(outputs: list[torch.Tensor], asked: dict[str, bool],
                          request_id: str | None) -> tuple[bytes, dict[str, str]]:
    """The (3, H, W) uint8 results as the ``tryon`` output, JSON or binary as asked: the body
    and its headers (with binary outputs, the header length and the octet-stream type)."""
    values = torch.stack([o.permute(1, 2, 0) for o in outputs]).contiguous().numpy()
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
