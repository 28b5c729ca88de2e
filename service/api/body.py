"""A request's body, read whole within its limits: its bytes (413), its time (408), and the
request's share of the bytes in flight (service/limits.py ByteBudget)."""
from __future__ import annotations

import asyncio

from fastapi import Request
from starlette.requests import ClientDisconnect

from ..limits import byte_count
from .context import request_context
from .errors import CLIENT_GONE, ApiError


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The whole body, at most ``limit`` bytes, arrived within ``timeout_s`` (a client that
    stalls mid-upload would otherwise hold its request open for as long as it likes), each
    chunk taken from the request's share of the bytes in flight as it arrives."""
    declared = byte_count(request.headers.get("content-length"))
    if declared is not None and declared > limit:
        raise ApiError(413, "payload_too_large", f"the request body is {declared} bytes, over the limit of {limit}")
    hold = request_context(request).hold
    chunks, total = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                total += len(chunk)
                if total > limit:
                    raise ApiError(413, "payload_too_large", f"the request body is over the limit of {limit} bytes")
                if hold is not None:
                    hold.take(len(chunk), "the request body")
                chunks.append(chunk)
    except TimeoutError:
        raise ApiError(408, "body_timeout", f"the request body did not arrive within {timeout_s:g} s "
                       f"({total} bytes came); send it at once") from None
    except ClientDisconnect:  # hung up mid-upload: logged and counted as gone, not as a 500
        request_context(request).client_gone = True
        raise ApiError(CLIENT_GONE, "client_gone", "the client closed the connection while sending the body") \
            from None
    if hold is not None and len(chunks) > 1:
        hold.take(total, "the request body")  # the joined copy, beside the chunks until they go
    return b"".join(chunks)
