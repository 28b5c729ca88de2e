"""The queue's one interface, and the engine's as the queue sees it.

``WorkQueue`` is what every caller that queues work holds: the HTTP routes, and
anything else that enters through the queue. The ``Batcher`` of this process
and the ``RemoteBatcher`` of a front-end process (service/processes/remote.py)
both implement it, so a caller cannot tell which one it has. ``InferenceEngine``
is what the batcher needs of a model: ``model.engine.Engine`` implements it, and
so do the stand-ins of the tests and benchmarks.
"""
from __future__ import annotations

import asyncio
from typing import Iterator, Protocol

import torch

from model.images import TryOnInputs

from .admission import ServiceRate
from .work import GarmentsInputs
from .drop_reason import DropReason
from .priority import Priority


class QueuedWork(Protocol):
    """A submitted ``Work``: ``future`` resolves with a WorkResult (one try-on) or a GarmentsStream
    (garments), or fails with a QueueError."""
    deadline: float  # on this event loop's clock
    future: asyncio.Future

    def abandon(self, reason: DropReason) -> None:
        """Nobody will read the answer: the work is never run, or not run further."""


class WorkQueue(Protocol):
    # Set once the device has failed for good (the reason); the process is then being replaced.
    device_failure: str | None
    # The engine's measured seconds per batch size, where this process measures them.
    rate: ServiceRate | None

    @property
    def depth(self) -> int:
        """Work waiting to start (what TRYON_QUEUE_LIMIT bounds)."""

    def submit(self, inputs: TryOnInputs | GarmentsInputs, deadline: float,
               priority: Priority = Priority.INTERACTIVE) -> QueuedWork:
        """Queues one ``Work``; raises a QueueError at once when it cannot be served in time (a
        remote queue may also fail the work's future with it instead)."""

    async def stop(self) -> None:
        """Answers what it holds (503 shutting_down) and stops."""


class InferenceEngine(Protocol):
    """Levels in, levels out: (N, 3, H, W) uint8 pose, masked model and cloth -> (N, 3, H, W) uint8."""
    # Whether iter_infer can stop between steps (the engine runs eagerly: no CUDA graph), so that
    # interactive work overtakes a bulk batch between two of them.
    pausable: bool

    def infer(self, pose: torch.Tensor, masked_model: torch.Tensor, cloth: torch.Tensor) -> torch.Tensor: ...

    def iter_infer(self, pose: torch.Tensor, masked_model: torch.Tensor,
                   cloth: torch.Tensor) -> Iterator[torch.Tensor | None]:
        """The forward in steps: None after each step but the last, then the outputs."""

    def iter_garments(self, pose: torch.Tensor, masked_model: torch.Tensor, cloths: torch.Tensor,
                      chunk_size: int | None = None) -> Iterator[tuple[int, torch.Tensor]]:
        """One person (1, 3, H, W) in N garments: (start, outputs) chunk by chunk."""
