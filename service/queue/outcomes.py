"""What the queue says about work it did not finish: one exception per outcome (why work was
dropped unrun is ``DropReason``, queue/drop_reason.py).

The batcher raises (or resolves a ``Work``'s future with) these and knows nothing
of HTTP; service/api/errors.py maps each to its status and error code once.
"""
from __future__ import annotations

from model import device_errors


class QueueError(Exception):
    """Work the queue refused or could not finish; ``retry_after_s`` when retrying can help."""
    retry_after_s: float | None = None

    def __init__(self, message: str, retry_after_s: float | None = None):
        super().__init__(message)
        self.message = message
        if retry_after_s is not None:
            self.retry_after_s = retry_after_s


class QueueFull(QueueError):
    retry_after_s = 1.0


class Overloaded(QueueError):
    """Admission control: the work queued ahead would not let this request finish in time."""


class DeadlineTooShort(QueueError):
    """Admission control: the request's deadline is shorter than its own work here, with nothing ahead
    of it: it can never be met, so retrying would not help (a refusal of the request, not the load)."""


class DeadlineExceeded(QueueError):
    pass


class ShuttingDown(QueueError):
    retry_after_s = 1.0


class DeviceOutOfMemory(QueueError):
    retry_after_s = 1.0


class DeviceFailed(QueueError, device_errors.DeviceFailed):
    """model.device_errors.DeviceFailed (defined there, once) as the queue reports it: a QueueError, so
    every place that answers the queue's outcomes answers it; this process serves nothing more."""
    retry_after_s = 1.0


class InferenceFailed(QueueError):
    pass


class EngineUnreachable(QueueError):
    """A front-end process whose engine process is not (yet, or any longer) connected."""
    retry_after_s = 5.0
