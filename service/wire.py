"""What crosses the Unix socket between front-end processes and the engine process.

A message is a JSON header and a binary payload, each length-prefixed. A try-on's
images cross in a slot of the memory the two processes share (service/arena.py),
which the message names; others (a garments request's, or when no slot is free)
cross in the payload, as the uint8 levels they are on both sides (model.images: the
service queues levels, the engine gives levels back), in pixel order, as decoded.
Errors cross as the fields of an ApiError; deadlines as remaining seconds,
since each process's event loop has its own clock.
"""
from __future__ import annotations

import asyncio
import json
import math
import struct

import torch

from .errors import ApiError, from_queue_error
from .outcomes import QueueError

_LENGTHS = struct.Struct("!II")  # header bytes, payload bytes


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


def error_fields(exc: ApiError | QueueError) -> dict:
    """An outcome as it crosses: the queue's outcomes as the answers they map to."""
    if isinstance(exc, QueueError):
        exc = from_queue_error(exc)
    return {"status": exc.status, "code": exc.code, "message": exc.message, "field": exc.field,
            "headers": exc.headers}


def error_from(fields: dict) -> ApiError:
    return ApiError(**fields)
