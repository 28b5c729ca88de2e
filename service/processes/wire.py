"""What crosses the Unix socket between front-end processes and the engine process.

A message is a JSON header and a binary payload, each length-prefixed. The headers
are the TypedDicts below: a front end sends ``Hello``, ``Submit`` and ``Abandon``;
the engine process answers ``EngineHello`` once, then per ``Work`` a ``Result``, an
``Error``, or a ``StreamStart`` followed by ``Chunk``s (or one ``ChunkError``).
A try-on's images cross in a slot of the memory the two processes share
(service/processes/arena.py), which the message names; others (a garments
request's, or when no slot is free) cross in the payload, as the uint8 levels they
are on both sides, in pixel order, as decoded. Failures cross as the queue's
outcomes (service/queue/outcomes.py), by name: the front end raises the same
exception the batcher raised, and its HTTP edge maps it as it maps its own.
Deadlines cross as remaining seconds, since each process's event loop has its own clock.
With tracing on, a submit carries its request's trace context (``trace``: W3C traceparent and
tracestate), so the queue wait and the batch in the engine process belong to the request's trace.
"""
from __future__ import annotations

import asyncio
import json
import math
import struct
from typing import Literal, TypedDict

import torch

from ..queue import outcomes
from ..queue.outcomes import QueueError

_LENGTHS = struct.Struct("!II")  # header bytes, payload bytes


class Hello(TypedDict):
    op: Literal["hello"]
    arena: int | None  # the front end's arena, by the engine process's number for it


class Submit(TypedDict, total=False):
    op: Literal["submit"]
    id: int
    garments: bool
    remaining_s: float
    chunk_size: int | None
    priority: str  # a Priority's value
    slot: int  # the images are in this arena slot; else the payload holds them, shaped by:
    shapes: list[list[int]]
    trace: dict[str, str]  # with tracing on: the request's W3C traceparent (and tracestate)


class Abandon(TypedDict):
    op: Literal["abandon"]
    id: int
    reason: str  # a DropReason's value


class Outcome(TypedDict):
    """A QueueError as it crosses: its class name, message and retry delay."""
    kind: str
    message: str
    retry_after_s: float | None


class EngineHello(TypedDict):
    type: Literal["hello"]
    info: dict
    device: str
    weights: dict  # name, random, sha256
    # seconds per engine call by batch size (JSON keys are strings), as the engine timed them at start
    seconds_by_batch_size: dict[str, float]


class Result(TypedDict, total=False):
    id: int
    type: Literal["result"]
    queue_s: float
    inference_s: float
    batch_size: int
    depth: int
    shapes: list[list[int]]  # absent: the output is in the ``Work``'s arena slot


class Error(TypedDict, total=False):
    id: int
    type: Literal["error", "chunk_error"]
    outcome: Outcome
    depth: int


class StreamStart(TypedDict):
    id: int
    type: Literal["stream"]
    garments: int
    queue_s: float
    depth: int


class Chunk(TypedDict):
    id: int
    type: Literal["chunk"]
    start: int
    shapes: list[list[int]]
    inference_s: float


def frame(header: dict, payload: bytes | memoryview = b"") -> bytes:
    text = json.dumps(header).encode()
    return b"".join((_LENGTHS.pack(len(text), len(payload)), text, payload))


async def read_message(reader: asyncio.StreamReader) -> tuple[dict, bytearray]:
    """The next message; asyncio.IncompleteReadError when the other side has gone."""
    header_len, payload_len = _LENGTHS.unpack(await reader.readexactly(_LENGTHS.size))
    header = json.loads(await reader.readexactly(header_len))
    return header, bytearray(await reader.readexactly(payload_len)) if payload_len else bytearray()


def pack(tensors: list[torch.Tensor]) -> tuple[list[list[int]], bytes]:
    """uint8 (..., 3, H, W) levels -> their shapes and their bytes in pixel order (..., H, W, 3),
    the layout they were decoded in: no copy is made to send a decoded image."""
    pixels = [t.movedim(-3, -1).contiguous() for t in tensors]
    return [list(t.shape) for t in tensors], b"".join(memoryview(p.numpy()) for p in pixels)


def unpack(shapes: list[list[int]], payload: bytearray) -> list[torch.Tensor]:
    """The tensors ``pack`` sent, as views of ``payload`` (writable: torch wants no read-only memory)."""
    tensors, start = [], 0
    for shape in shapes:
        *lead, channels, height, width = shape
        size = math.prod(shape)
        pixels = torch.frombuffer(payload, dtype=torch.uint8, count=size, offset=start)
        tensors.append(pixels.view(*lead, height, width, channels).movedim(-1, -3))
        start += size
    return tensors


# Every outcome the queue can raise, by the name it crosses under.
_OUTCOMES: dict[str, type[QueueError]] = {
    cls.__name__: cls for cls in vars(outcomes).values()
    if isinstance(cls, type) and issubclass(cls, QueueError)}


def outcome_fields(exc: QueueError) -> Outcome:
    retry = exc.__dict__.get("retry_after_s")  # set on this instance, not the class's default
    return {"kind": type(exc).__name__, "message": exc.message, "retry_after_s": retry}


def outcome_from(fields: Outcome) -> QueueError:
    """The outcome the engine process's queue raised, raised again here."""
    return _OUTCOMES.get(fields["kind"], QueueError)(fields["message"], fields["retry_after_s"])
