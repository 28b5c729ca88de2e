"""A clock a test drives: the wall clock the jobs room reads (its ``clock`` parameter), and a
``sleep`` that moves it instead of waiting."""
from __future__ import annotations

import asyncio
import time


class FakeClock:
    """``clock()`` is ``now``, which moves only by ``advance`` or ``sleep`` (each sleep recorded in
    ``slept``). It starts at the real time, so signatures dated by it stay within a verifier's tolerance."""

    def __init__(self, now: float | None = None):
        self.now = time.time() if now is None else now
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)  # a sleep still lets the others run
