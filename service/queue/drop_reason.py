"""Why queued work was dropped unrun: the one enum, the ``reason`` label of tryon_dropped_total."""
from __future__ import annotations

from enum import Enum


class DropReason(str, Enum):
    """Why a queued ``Work`` was never run (the ``reason`` label of tryon_dropped_total)."""
    CLIENT_GONE = "client_gone"
    DEADLINE = "deadline"
    FINISHED = "finished"  # a garments answer that ended early
    SHUTTING_DOWN = "shutting_down"
    DEVICE_FAILED = "device_failed"
    REQUEST_FAILED = "request_failed"  # another item of the same request (a protocol batch) failed
