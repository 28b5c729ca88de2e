"""Admission control: will a new request finish before its deadline?

The engine's own timings say what a batch of each size costs (seeded by the
warm-up, then a moving average of every batch run). A new request waits for
what is already running, then for the work queued ahead of it at its
priority or higher, then for its own batch; if that estimate ends past its
deadline it is refused on arrival (503 ``overloaded`` with a Retry-After
from the estimate) instead of answering 504 after the whole deadline.
"""
from __future__ import annotations

import bisect
import math
import threading
from dataclasses import dataclass
from typing import Callable, Iterable

import torch

from model.stopwatch import Stopwatch

# Weight of the newest batch in the moving average: a few batches follow a change
# in load or clock speed, one slow batch (a page fault, a neighbour) moves it little.
SMOOTHING = 0.3
# Estimates are stretched by this much before comparing with a deadline: an accepted
# request must be served, so the estimate errs long.
SAFETY = 1.15


# On a CPU the cost per item grows with the batch: 1.3 s/item at 2, 1.7 s/item at 4 at 256x192
# (Settings.garment_chunk_for), about 1.3x per doubling. A size not yet run is assumed to cost
# batch 1's time per item times this per doubling, which errs long, until a batch of it runs.
CPU_GROWTH_PER_DOUBLING = 1.35


class ServiceRate:
    """Seconds per engine call by batch size; thread-safe (the engine thread records)."""

    def __init__(self, seconds_by_size: dict[int, float] | None = None):
        self._seconds: dict[int, float] = {}
        self._lock = threading.Lock()
        for size, seconds in (seconds_by_size or {}).items():
            self.record(size, seconds)

    @classmethod
    def measured(cls, infer: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
                 image_size: tuple[int, int], batch_sizes: Iterable[int]) -> "ServiceRate":
        """Times one call of a warm engine at each size: on a GPU, where the warm-up's own timings
        include each size's graph capture and the first kernels' compiles."""
        rate = cls()
        for n in sorted(set(batch_sizes)):
            zeros = torch.zeros(n, 3, *image_size, dtype=torch.uint8)  # levels, as the service queues them
            clock = Stopwatch()
            infer(zeros, zeros, zeros)
            rate.record(n, clock.elapsed)
        return rate

    @classmethod
    def from_smallest(cls, size: int, seconds: float, batch_sizes: Iterable[int]) -> "ServiceRate":
        """A CPU engine timed at its smallest ``size`` only (the warm-up's one forward, ``seconds``:
        start-up in seconds, not minutes): every other size seeded long (CPU_GROWTH_PER_DOUBLING),
        then followed as batches run."""
        per_item = seconds / size
        return cls({n: per_item * n * CPU_GROWTH_PER_DOUBLING ** math.log2(n / size) if n != size else seconds
                    for n in batch_sizes})

    def record(self, batch_size: int, seconds: float) -> None:
        with self._lock:
            old = self._seconds.get(batch_size)
            self._seconds[batch_size] = seconds if old is None else old + SMOOTHING * (seconds - old)

    def seconds(self, batch_size: int) -> float:
        """An engine call of ``batch_size`` items: measured, or interpolated from the sizes measured
        (linear in the items; beyond the largest, that size's time per item)."""
        with self._lock:
            if batch_size in self._seconds:
                return self._seconds[batch_size]
            sizes = sorted(self._seconds)
        if not sizes:
            return 0.0
        i = bisect.bisect_left(sizes, batch_size)
        if i == 0:
            return self._seconds[sizes[0]] * batch_size / sizes[0]
        if i == len(sizes):
            return self._seconds[sizes[-1]] * batch_size / sizes[-1]
        lo, hi = sizes[i - 1], sizes[i]
        t_lo, t_hi = self._seconds[lo], self._seconds[hi]
        return t_lo + (t_hi - t_lo) * (batch_size - lo) / (hi - lo)

    def items_seconds(self, items: int, max_batch_size: int) -> float:
        """``items`` single requests run in full batches of ``max_batch_size`` and one partial batch."""
        full, rest = divmod(items, max_batch_size)
        return full * self.seconds(max_batch_size) + (self.seconds(rest) if rest else 0.0)

    def snapshot(self) -> dict[int, float]:
        with self._lock:
            return dict(sorted(self._seconds.items()))


def own_work_s(rate: ServiceRate, max_batch_size: int, garments: int | None = None, chunk_size: int = 1) -> float:
    """A request's own engine time with nothing ahead of it (one try-on, or ``garments`` in chunks),
    stretched by SAFETY as every estimate is: a deadline shorter than it can never be met."""
    return SAFETY * (rate.items_seconds(1, max_batch_size) if garments is None
                     else rate.items_seconds(garments, min(chunk_size, max_batch_size)))


def too_short(deadline_s: float, own_s: float) -> str:
    return (f"a deadline of {deadline_s:.3g} s is shorter than the request's own work here (about {own_s:.2g} s "
            "with nothing queued ahead): it can never be met; send a longer timeout")


@dataclass(frozen=True)
class Estimate:
    """When a request would finish, counted from now, and what it waits for."""
    seconds: float
    items_ahead: int

    def refuses(self, budget_s: float) -> bool:
        return self.seconds * SAFETY > budget_s

    def retry_after_s(self, budget_s: float) -> int:
        """Whole seconds until the work ahead has shrunk enough for a request like this one to fit."""
        return max(1, math.ceil(self.seconds * SAFETY - budget_s))
