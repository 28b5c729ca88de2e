"""What crosses the Unix socket between front-end processes and the engine process.

A message is a JSON header and a binary payload, each length-prefixed. Images
cross as uint8 levels (a quarter of float32's bytes); every tensor the service
queues was made from 8-bit levels by model.images, and an output's levels are
what its encoder would make of it, so nothing a client sees changes.
Errors cross as the fields of an ApiError; deadlines as remaining seconds,
since each process's event loop has its own clock.
"""
from __future__ import annotations

import asyncio
import json
import struct

import numpy as np
import torch

from model.images import levels_to_tensor, tensor_to_levels

from .errors import ApiError, from_queue_error
from .outcomes import QueueError

_LENGTHS = struct.Struct("!II")  # header bytes, payload bytes


def frame(header: dict, payload: bytes | memoryview = b"") -> bytes:
    text = json.dumps(header).encode()
    return b"".join((_LENGTHS.pack(len(text), len(payload)), text, payload))


async def read_message(reader: asyncio.StreamReader) -> tuple[dict, bytes]:
    """The next message; asyncio.IncompleteReadError when the other side has gone."""
    header_len, payload_len = _LENGTHS.unpack(await reader.readexactly(_LENGTHS.size))
    header = json.loads(await reader.readexactly(header_len))
    return header, await reader.readexactly(payload_len) if payload_len else b""


def pack(tensors: list[torch.Tensor]) -> tuple[list[list[int]], bytes]:
    """Tensors in [-1, 1] -> their shapes and their uint8 levels, concatenated."""
    levels = [tensor_to_levels(t) for t in tensors]
    return [list(x.shape) for x in levels], b"".join(x.tobytes() for x in levels)


def unpack(shapes: list[list[int]], payload: bytes) -> list[torch.Tensor]:
    tensors, start = [], 0
    for shape in shapes:
        size = int(np.prod(shape))
        levels = np.frombuffer(payload, dtype=np.uint8, count=size, offset=start).reshape(shape)
        tensors.append(levels_to_tensor(levels))
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
