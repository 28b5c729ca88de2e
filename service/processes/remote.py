"""A front-end process's side of TRYON_WORKERS > 1: the queue's interface
(service/queue/interface.py: ``submit(inputs, deadline, priority) -> work``, ``await
work.future``) over the engine process's Unix socket (service/processes/engine_server.py).

A refusal at submission (queue full, overloaded) arrives through the work's future
rather than from ``submit`` itself; the routes await that future, so the client
gets the same answer either way.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass, field
from typing import Callable

import torch

from model.images import TryOnInputs

from .. import tracing
from ..queue.admission import ServiceRate
from ..queue.work import GarmentsChunk, GarmentsInputs, GarmentsStream, WorkResult
from ..queue.drop_reason import DropReason
from ..queue.outcomes import EngineUnreachable, QueueError, ShuttingDown
from ..queue.priority import Priority
from .arena import Arena
from .wire import Abandon, Hello, Submit, frame, outcome_from, pack, read_message, unpack

log = logging.getLogger("service.remote")


@dataclass(frozen=True)
class EngineLink:
    """How a front-end process reaches the engine process: its socket, and the arena they share
    (its number there, and this process's descriptor of it)."""
    socket: str
    arena_id: int | None = None
    arena_fd: int | None = None


@dataclass(frozen=True)
class RemoteWeights:
    name: str
    random: bool
    sha256: str | None


class RemoteEngine:
    """What the front end reports of the engine it feeds (readiness, X-Weights)."""

    def __init__(self, hello: dict):
        self.info = hello["info"]
        self.weights = RemoteWeights(**hello["weights"])
        self.device = torch.device(hello["device"])
        self.sampler = self.info["sampler"]  # in use, after the engine's start-up checks
        self.precision = self.info["precision"]


@dataclass(eq=False)
class RemoteWork:
    id: int
    deadline: float  # on this process's event loop's clock
    future: asyncio.Future
    batcher: "RemoteBatcher"
    slot: int | None = None  # of the batcher's arena, while the work holds one
    stream: GarmentsStream | None = None
    drop_reason: DropReason | None = field(default=None)

    def abandon(self, reason: DropReason) -> None:
        if self.drop_reason is None:
            self.batcher.send(Abandon(op="abandon", id=self.id, reason=reason.value))
            # Free now: the engine writes this slot's output before it reads the abandon, if at all,
            # and the next work's output after; it may still read these inputs, for nobody.
            self.batcher.release_slot(self)
        self.drop_reason = reason
        self.future.cancel()


class RemoteBatcher:
    # The engine process decides admission and notices a broken device (it then exits, and
    # on_lost takes this front end down with it): nothing of either is kept here.
    device_failure: str | None = None
    # The engine's own rate as it timed it at start (its hello): enough for the edge to refuse a timeout
    # no server could meet before reading the body (a 10 ms one lapsed while decoding, and was a 504).
    rate: ServiceRate | None = None

    def __init__(self, on_lost: Callable[[], None] | None = None, arena: tuple[int, Arena] | None = None):
        self.depth = 0  # the engine's queue depth, as last reported
        self.on_lost = on_lost  # called when the engine process goes away while this one still serves
        self.arena_id, self.arena = arena or (None, None)  # (the engine's number for it, the arena)
        self._stopping = False
        self._works: dict[int, RemoteWork] = {}
        self._ids = itertools.count()
        self._writer: asyncio.StreamWriter | None = None
        self._reading: asyncio.Task | None = None

    async def connect(self, path: str) -> dict:
        """Connects to the engine process; its hello (engine info, weights, device)."""
        reader, self._writer = await asyncio.open_unix_connection(path, limit=2 ** 26)
        self.send(Hello(op="hello", arena=self.arena_id))
        hello, _ = await read_message(reader)
        self.rate = ServiceRate({int(k): v for k, v in hello["seconds_by_batch_size"].items()})
        self._reading = asyncio.get_running_loop().create_task(self._read(reader), name="tryon-remote-batcher")
        return hello

    def send(self, header: dict, payload: bytes = b"") -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(frame(header, payload))

    def submit(self, inputs: TryOnInputs | GarmentsInputs, deadline: float,
               priority: Priority = Priority.INTERACTIVE) -> RemoteWork:
        loop = asyncio.get_running_loop()
        work = RemoteWork(next(self._ids), deadline, loop.create_future(), self)
        if self._writer is None or self._writer.is_closing():
            raise EngineUnreachable("the engine process is not reachable")
        garments = isinstance(inputs, GarmentsInputs)
        header = Submit(op="submit", id=work.id, garments=garments, remaining_s=deadline - loop.time(),
                        chunk_size=inputs.chunk_size if garments else None, priority=priority.value)
        if tracing.ENABLED:
            header["trace"] = tracing.carrier()
        if not garments and self.arena is not None:
            work.slot = self.arena.put(inputs.pose, inputs.masked_model, inputs.cloth)
        self._works[work.id] = work
        if work.slot is not None:
            self.send(header | {"slot": work.slot})
        else:
            shapes, data = pack([inputs.pose, inputs.masked_model, inputs.cloths if garments else inputs.cloth])
            self.send(header | {"shapes": shapes}, data)
        return work

    def release_slot(self, work: RemoteWork) -> None:
        if work.slot is not None:
            self.arena.release(work.slot)
            work.slot = None

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                header, payload = await read_message(reader)
                self.depth = header.get("depth", self.depth)
                work = self._works.get(header["id"])
                if work is not None:
                    self._deliver(work, header, payload)
        except (asyncio.IncompleteReadError, ConnectionError):
            if not self._stopping:
                log.error("the engine process closed the connection")
                if self.on_lost is not None:
                    self.on_lost()
        finally:
            gone = ShuttingDown("the server is shutting down")
            for work in self._works.values():
                self.release_slot(work)
                self._fail(work, gone)
            self._works.clear()
            if self._writer is not None:
                self._writer.close()

    def _deliver(self, work: RemoteWork, header: dict, payload: bytes) -> None:
        kind = header["type"]
        if kind in ("result", "error", "chunk_error"):
            self._works.pop(work.id, None)
        if work.future.cancelled():
            return
        if kind == "error" or kind == "chunk_error":
            self.release_slot(work)
            self._fail(work, outcome_from(header["outcome"]))
        elif kind == "result":
            if "shapes" in header:
                output, = unpack(header["shapes"], payload)
            else:  # in the work's slot: a copy of its own, for the slot is free from here on
                output = self.arena.output(work.slot).clone()
            self.release_slot(work)
            work.future.set_result(WorkResult(output, header["queue_s"], header["inference_s"], header["batch_size"]))
        elif kind == "stream":
            work.stream = GarmentsStream(work, header["garments"], header["queue_s"])
            work.future.set_result(work.stream)
        elif kind == "chunk":
            outputs, = unpack(header["shapes"], payload)
            work.stream.put(GarmentsChunk(header["start"], outputs, header["inference_s"]))
            if header["start"] + outputs.shape[0] >= work.stream.garments:
                self._works.pop(work.id, None)

    @staticmethod
    def _fail(work: RemoteWork, error: QueueError) -> None:
        if work.stream is not None:
            work.stream.put(error)
        elif not work.future.done():
            work.future.set_exception(error)

    async def stop(self) -> None:
        self._stopping = True
        if self._writer is not None:
            self._writer.close()
        if self._reading is not None:
            self._reading.cancel()
            await asyncio.gather(self._reading, return_exceptions=True)
