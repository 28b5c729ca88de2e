"""Request-body limits, the one formula the service and nginx's rendered config share; byte counts
read from headers; the budget of bytes in flight across the requests of one process, and a body
read within both (read_capped).

Standard library only and free of package imports: docker/render_nginx.py
loads this file by path before anything is installed.
"""
from __future__ import annotations

import re
import threading
from collections.abc import AsyncIterable

# A person side carries at most three images (masked model or person, pose, parse).
PERSON_IMAGES = 3
# Keypoint JSON, options and multipart framing.
FIELDS_ALLOWANCE = 65_536


def body_limit(max_upload_bytes: int, images: int) -> int:
    """A body carrying ``images`` images as base64 (4/3 of their bytes; multipart
    needs less) plus the other fields."""
    return images * (max_upload_bytes * 4 // 3 + 4) + FIELDS_ALLOWANCE


def request_body_limit(max_upload_bytes: int) -> int:
    """/v1/tryon and /v1/prepare: the person side and one garment fit in three images' room."""
    return body_limit(max_upload_bytes, PERSON_IMAGES)


def batch_body_limit(max_upload_bytes: int, max_garments: int) -> int:
    """/v1/tryon/batch: the person side and up to ``max_garments`` garments."""
    return body_limit(max_upload_bytes, PERSON_IMAGES + max_garments)


# POST /v1/jobs, at most (TRYON_JOBS_MAX_BODY_BYTES): a job of many garments is meant to send URLs.
JOBS_MAX_BODY_BYTES = 67_108_864


def jobs_body_limit(max_upload_bytes: int, jobs_max_garments: int, jobs_max_body_bytes: int) -> int:
    """POST /v1/jobs: the person side and up to ``jobs_max_garments`` garments, at most ``jobs_max_body_bytes``."""
    return min(batch_body_limit(max_upload_bytes, jobs_max_garments), jobs_max_body_bytes)


# A byte count as a header states it: ASCII digits only (str.isdigit takes "²", which int() refuses),
# at most 15 of them (a petabyte: no larger count is anything but an attack on int()).
_BYTE_COUNT = re.compile(r"[0-9]{1,15}")


def byte_count(text: str | None) -> int | None:
    """``Content-Length``-style text as an int; None when absent or not plain ASCII digits."""
    return int(text) if text is not None and _BYTE_COUNT.fullmatch(text) else None


class OverBudget(Exception):
    """Taking these bytes would pass the budget of bytes in flight: refused for now (503, Retry-After)."""

    def __init__(self, what: str, wanted: int, budget: "ByteBudget"):
        super().__init__(f"{what} needs {wanted} bytes and this process has {budget.limit - budget.used} of its "
                         f"{budget.limit} bytes in flight left (TRYON_MAX_BYTES_IN_FLIGHT); retry later")
        self.what = what
        self.wanted = wanted


class ByteBudget:
    """The bytes that requests in flight hold in this process, together: bodies as they arrive, URL
    bodies as they download, images as their headers say they will decode. Taking past the limit is
    refused (OverBudget), never waited for: a caller told 503 now retries, one left waiting holds its
    connection and whatever it has already taken. Event-loop and thread safe (one lock)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def take(self, n: int, what: str) -> None:
        with self._lock:
            if self.used + n > self.limit:
                raise OverBudget(what, n, self)
            self.used += n

    def give(self, n: int) -> None:
        with self._lock:
            self.used -= n

    def hold(self) -> "BudgetHold":
        return BudgetHold(self)


class BudgetHold:
    """One request's share of a ByteBudget, given back in one step when the request ends."""

    def __init__(self, budget: ByteBudget):
        self.budget = budget
        self.held = 0

    def take(self, n: int, what: str) -> None:
        self.budget.take(n, what)
        self.held += n

    def give(self, n: int) -> None:
        self.budget.give(n)
        self.held -= n

    def release(self) -> None:
        self.give(self.held)


class OverLimit(Exception):
    """A body ran past its own limit of bytes (the caller's 413)."""


async def read_capped(stream: AsyncIterable[bytes], limit: int, hold: BudgetHold | None, what: str) -> bytes:
    """The stream's bytes joined, at most ``limit`` (OverLimit beyond), each chunk taken from ``hold``
    as it arrives; the joined copy is taken before the join and the chunks' share given back after,
    so the hold ends with the body's size and covered the moment both were there.

    On any failure the chunks are let go at once: the exception's traceback keeps this frame alive
    until the cycle collector runs, long after the request has given its bytes back, and the next
    requests take them again. Refused URL fetches kept that way grew a fresh process by 1079-1132 MiB
    on a 512 MiB budget, 416-516 MiB since (tests/service/test_limits.py, fifty hostile requests)."""
    chunks: list[bytes] = []
    total = 0
    try:
        async for chunk in stream:
            total += len(chunk)
            if total > limit:
                raise OverLimit(what)
            if hold is not None:
                hold.take(len(chunk), what)
            chunks.append(chunk)
        if len(chunks) == 1:
            return chunks[0]
        if hold is not None:
            hold.take(total, what)
        body = b"".join(chunks)
        chunks.clear()
        if hold is not None:
            hold.give(total)
        return body
    finally:
        chunks.clear()
        chunk = b""  # the one refused, if one was
