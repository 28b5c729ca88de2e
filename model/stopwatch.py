"""Time since a start: the one way a step is timed (Server-Timing's milliseconds, a batch's seconds)."""
from __future__ import annotations

import time


class Stopwatch:
    """Started when made; ``elapsed`` (seconds) and ``elapsed_ms`` read it.
    A monotonic clock (``time.perf_counter``): wall-clock steps never show up as work."""
    __slots__ = ("_started",)

    def __init__(self) -> None:
        self._started = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._started

    @property
    def elapsed_ms(self) -> float:
        return self.elapsed * 1000

