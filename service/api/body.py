"""A request's body, read whole within its limits: its bytes (413), its time (408), and the
request's share of the bytes in flight (service/limits.py ByteBudget)."""
from __future__ import annotations

import asyncio

from fastapi import Request
from starlette.requests import ClientDisconnect

from ..limits import OverLimit, byte_count, read_capped
from .context import request_context
from .errors import CLIENT_GONE, ApiError


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The whole body, at most ``limit`` bytes, arrived within ``timeout_s`` (a client that
    stalls mid-upload would otherwise hold its request open for as long as it likes), taken from
    the request's share of the bytes in flight as it arrives (limits.read_capped)."""
    declared = byte_count(request.headers.get("content-length"))
    if declared is not None and declared > limit:
        raise ApiError(413, "payload_too_large", f"the request body is {declared} bytes, over the limit of {limit}")
    try:
        async with asyncio.timeout(timeout_s):
            return await read_capped(request.stream(), limit, request_context(request).hold, "the request body")
    except OverLimit:
        raise ApiError(413, "payload_too_large", f"the request body is over the limit of {limit} bytes") from None
    except TimeoutError:
        raise ApiError(408, "body_timeout", f"the request body did not arrive within {timeout_s:g} s; "
                       "send it at once") from None
    except ClientDisconnect:  # hung up mid-upload: logged and counted as gone, not as a 500
        request_context(request).client_gone = True
        raise ApiError(CLIENT_GONE, "client_gone", "the client closed the connection while sending the body") \
            from None
