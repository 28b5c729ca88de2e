"""What waits in the queue and what comes out of it.

A ``Work`` is one request's work: one try-on (``model.images.TryOnInputs``) or one
person in many garments (``GarmentsInputs``), with its deadline, its priority and
the future the request awaits. That future resolves with a ``WorkResult``, or, for
garments, with a ``GarmentsStream`` once the first chunk is dressed; or it fails
with one of the outcomes of service/queue/outcomes.py.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Iterator

import torch

from model.images import TryOnInputs, stack_levels

from .. import tracing
from .drop_reason import DropReason
from .outcomes import DeadlineExceeded, QueueError
from .priority import Priority


@dataclass(frozen=True)
class GarmentsInputs:
    """One person, many garments: (3, H, W) pose and masked model, (N, 3, H, W) garments,
    run ``chunk_size`` garments per engine call (None: the engine's largest batch)."""
    pose: torch.Tensor
    masked_model: torch.Tensor
    cloths: torch.Tensor
    chunk_size: int | None = None

    @classmethod
    def of(cls, garments: list[TryOnInputs], chunk_size: int | None) -> "GarmentsInputs":
        """One person's decoded garments as one job: each carries the same person side (pose and
        masked model), taken from the first; their cloths are stacked in order."""
        first = garments[0]
        return cls(first.pose, first.masked_model, stack_levels([g.cloth for g in garments]), chunk_size)


@dataclass(frozen=True)
class GarmentsChunk:
    """The results of consecutive garments of a ``Work``, from one engine call."""
    start: int  # position of its first garment in GarmentsInputs.cloths
    outputs: torch.Tensor  # (n, 3, H, W), as the engine gives them (uint8 levels for levels)
    inference_s: float  # the engine call (the first chunk's includes encoding the person)


@dataclass(frozen=True)
class WorkResult:
    output: torch.Tensor  # (3, H, W), as the engine gives it (uint8 levels for levels)
    queue_s: float
    inference_s: float
    batch_size: int


@dataclass(eq=False)
class Work:
    inputs: TryOnInputs | GarmentsInputs
    deadline: float  # on the event loop's clock
    future: asyncio.Future
    priority: Priority
    enqueued_at: float = field(default_factory=time.perf_counter)
    drop_reason: DropReason | None = None
    # A garments ``Work`` once its first chunk is out: where later chunks go, and its engine iterator.
    stream: GarmentsStream | None = None
    chunks: Iterator[tuple[int, torch.Tensor]] | None = None
    dressed: int = 0
    # The trace context current at submission (the request's span), or None with tracing off.
    trace: object = field(default_factory=tracing.current)

    @property
    def is_garments(self) -> bool:
        return isinstance(self.inputs, GarmentsInputs)

    @property
    def items_left(self) -> int:
        return self.inputs.cloths.shape[0] - self.dressed if self.is_garments else 1

    def abandon(self, reason: DropReason) -> None:
        """The client will not read the answer (gone, or deadline passed): never run it."""
        self.drop_reason = reason
        self.future.cancel()

    def dead(self, now: float) -> bool:
        if self.drop_reason is not None or now >= self.deadline:
            return True
        return self.stream is None and self.future.done()

    def fail(self, error: QueueError) -> None:
        """Tells the waiting request; a started garments ``Work``'s stream ends with the error."""
        if self.stream is not None:
            self.stream.put(error)
        elif not self.future.done():
            self.future.set_exception(error)


class GarmentsStream:
    """A running garments ``Work``, as its future's result: the chunks in garment order, each
    as soon as the worker has it. It ends after the last garment, or with one QueueError
    that stands for every garment not yet delivered (the engine failed, the request's
    deadline passed, or the server is shutting down)."""

    def __init__(self, work: Work, garments: int, queue_s: float):
        self.garments = garments
        self.queue_s = queue_s
        self._job = work
        self._items: asyncio.Queue[GarmentsChunk | QueueError] = asyncio.Queue()

    def put(self, item: GarmentsChunk | QueueError) -> None:
        self._items.put_nowait(item)

    async def chunks(self) -> AsyncIterator[GarmentsChunk | QueueError]:
        loop = asyncio.get_running_loop()
        delivered = 0
        while delivered < self.garments:
            try:
                item = await asyncio.wait_for(self._items.get(), max(0.0, self._job.deadline - loop.time()))
            except TimeoutError:
                self._job.abandon(DropReason.DEADLINE)
                item = DeadlineExceeded("this garment was not dressed within the request's deadline")
            yield item
            if isinstance(item, QueueError):
                return
            delivered += item.outputs.shape[0]

    def close(self) -> None:
        """The answer is over (or its client gone): the worker runs no further chunk."""
        if self._job.drop_reason is None:
            self._job.abandon(DropReason.FINISHED)


