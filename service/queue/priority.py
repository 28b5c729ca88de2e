"""A request's priority: which of the batcher's two queues its work waits in."""
from __future__ import annotations

from enum import Enum


class Priority(str, Enum):
    """Interactive work (a shopper waiting) is batched first; bulk work (catalog jobs) fills the rest."""
    INTERACTIVE = "interactive"
    BULK = "bulk"
