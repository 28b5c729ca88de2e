"""A front-end process's side of TRYON_WORKERS > 1: the queue's interface
(service/queue/interface.py: ``submit(inputs, deadline, priority) -> job``, ``await
job.future``) over the engine process's Unix socket (service/processes/engine_server.py).

A refusal at submission (queue full, overloaded) arrives through the job's future
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
from ..queue.jobs import GarmentsChunk, GarmentsInputs, GarmentsStream, JobResult
from ..queue.outcomes import DropReason, EngineUnreachable, Priority, QueueError, ShuttingDown
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
class RemoteJob:
    id: int
    deadline: float  # on this process's event loop's clock
    future: asyncio.Future
    batcher: "RemoteBatcher"
    slot: int | None = None  # of the batcher's arena, while the job holds one
    stream: GarmentsStream | None = None
    drop_reason: DropReason | None = field(default=None)

    def abandon(self, reason: DropReason) -> None:
        if self.drop_reason is None:
            self.batcher.send(Abandon(op="abandon", id=self.id, reason=reason.value))
            # Free now: the engine writes this slot's output before it reads the abandon, if at all,
            # and the next job's output after; it may still read these inputs, for nobody.
            self.batcher.release_slot(self)
        self.drop_reason = reason
        self.future.cancel()


class RemoteBatcher:
    # The engine process decides admission and notices a broken device (it then exits, and
    # on_lost takes this front end down with it): nothing of either is kept here.
    device_failure: str | None = None
    rate = None

    def __init__(self, on_lost: Callable[[], None] | None = None, arena: tuple[int, Arena] | None = None):
        self.depth = 0  # the engine's queue depth, as last reported
        self.on_lost = on_lost  # called when the engine process goes away while this one still serves
        self.arena_id, self.arena = arena or (None, None)  # (the engine's number for it, the arena)
        self._stopping = False
        self._jobs: dict[int, RemoteJob] = {}
        self._ids = itertools.count()
        self._writer: asyncio.StreamWriter | None = None
        self._reading: asyncio.Task | None = None

    async def connect(self, path: str) -> dict:
        """Connects to the engine process; its hello (engine info, weights, device)."""
        reader, self._writer = await asyncio.open_unix_connection(path, limit=2 ** 26)
        self.send(Hello(op="hello", arena=self.arena_id))
        hello, _ = await read_message(reader)
        self._reading = asyncio.get_running_loop().create_task(self._read(reader), name="tryon-remote-batcher")
        return hello

    def send(self, header: dict, payload: bytes = b"") -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(frame(header, payload))

    def submit(self, inputs: TryOnInputs | GarmentsInputs, deadline: float,
               priority: Priority = Priority.INTERACTIVE) -> RemoteJob:
        loop = asyncio.get_running_loop()
        job = RemoteJob(next(self._ids), deadline, loop.create_future(), self)
        if self._writer is None or self._writer.is_closing():
            raise EngineUnreachable("the engine process is not reachable")
        garments = isinstance(inputs, GarmentsInputs)
        header = Submit(op="submit", id=job.id, garments=garments, remaining_s=deadline - loop.time(),
                        chunk_size=inputs.chunk_size if garments else None, priority=priority.value)
        if tracing.ENABLED:
            header["trace"] = tracing.carrier()
        if not garments and self.arena is not None:
            job.slot = self.arena.put(inputs.pose, inputs.masked_model, inputs.cloth)
        self._jobs[job.id] = job
        if job.slot is not None:
            self.send(header | {"slot": job.slot})
        else:
            shapes, data = pack([inputs.pose, inputs.masked_model, inputs.cloths if garments else inputs.cloth])
            self.send(header | {"shapes": shapes}, data)
        return job

    def release_slot(self, job: RemoteJob) -> None:
        if job.slot is not None:
            self.arena.release(job.slot)
            job.slot = None

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                header, payload = await read_message(reader)
                self.depth = header.get("depth", self.depth)
                job = self._jobs.get(header["id"])
                if job is not None:
                    self._deliver(job, header, payload)
        except (asyncio.IncompleteReadError, ConnectionError):
            if not self._stopping:
                log.error("the engine process closed the connection")
                if self.on_lost is not None:
                    self.on_lost()
        finally:
            gone = ShuttingDown("the server is shutting down")
            for job in self._jobs.values():
                self.release_slot(job)
                self._fail(job, gone)
            self._jobs.clear()
            if self._writer is not None:
                self._writer.close()

    def _deliver(self, job: RemoteJob, header: dict, payload: bytes) -> None:
        kind = header["type"]
        if kind in ("result", "error", "chunk_error"):
            self._jobs.pop(job.id, None)
        if job.future.cancelled():
            return
        if kind == "error" or kind == "chunk_error":
            self.release_slot(job)
            self._fail(job, outcome_from(header["outcome"]))
        elif kind == "result":
            if "shapes" in header:
                output, = unpack(header["shapes"], payload)
            else:  # in the job's slot: a copy of its own, for the slot is free from here on
                output = self.arena.output(job.slot).clone()
            self.release_slot(job)
            job.future.set_result(JobResult(output, header["queue_s"], header["inference_s"], header["batch_size"]))
        elif kind == "stream":
            job.stream = GarmentsStream(job, header["garments"], header["queue_s"])
            job.future.set_result(job.stream)
        elif kind == "chunk":
            outputs, = unpack(header["shapes"], payload)
            job.stream.put(GarmentsChunk(header["start"], outputs, header["inference_s"]))
            if header["start"] + outputs.shape[0] >= job.stream.garments:
                self._jobs.pop(job.id, None)

    @staticmethod
    def _fail(job: RemoteJob, error: QueueError) -> None:
        if job.stream is not None:
            job.stream.put(error)
        elif not job.future.done():
            job.future.set_exception(error)

    async def stop(self) -> None:
        self._stopping = True
        if self._writer is not None:
            self._writer.close()
        if self._reading is not None:
            self._reading.cancel()
            await asyncio.gather(self._reading, return_exceptions=True)
