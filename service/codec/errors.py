"""The one error both entry points answer with: a status, a code, a message, the field at fault.

The HTTP edge (service/api/errors.py) turns it into a response; the jobs (service/jobs/)
keep it in a job's record. Either way the same input gives the same code, and the queue's
outcomes become answers through the one table here (``from_queue_error``).
"""
from __future__ import annotations

import math

from ..queue.outcomes import (DeadlineExceeded, DeadlineTooShort, DeviceFailed, DeviceOutOfMemory, EngineUnreachable,
                              InferenceFailed, Overloaded, QueueError, QueueFull, ShuttingDown)


class ApiError(Exception):
    """An answer other than success; ``field`` names the input at fault, if one is."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers or {}


# The queue's outcomes as answers: 503s say "try again (elsewhere)", with Retry-After.
_QUEUE_ERRORS: dict[type[QueueError], tuple[int, str]] = {
    QueueFull: (503, "queue_full"),
    Overloaded: (503, "overloaded"),
    DeadlineTooShort: (422, "timeout_too_short"),
    ShuttingDown: (503, "shutting_down"),
    DeviceOutOfMemory: (503, "out_of_memory"),
    DeviceFailed: (503, "device_failed"),
    DeadlineExceeded: (504, "deadline_exceeded"),
    InferenceFailed: (500, "inference_failed"),
    EngineUnreachable: (503, "not_ready"),
}


def from_queue_error(exc: QueueError) -> ApiError:
    status, code = _QUEUE_ERRORS.get(type(exc), (500, "inference_failed"))
    headers = {"Retry-After": str(math.ceil(exc.retry_after_s))} if exc.retry_after_s is not None else None
    field = "timeout" if isinstance(exc, DeadlineTooShort) else None
    return ApiError(status, code, exc.message, field, headers=headers)
