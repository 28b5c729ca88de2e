"""Runs the tasks of the job store through the queue's one interface.

A replica runs TRYON_JOBS_CONCURRENCY tasks at once. Each task: the person side and
its garments decoded by the codec, as /v1/tryon/batch decodes them (so errors carry
/v1/tryon's codes), the
garments not yet settled submitted as one ``GarmentsInputs`` with ``Priority.BULK`` (as
/v1/tryon/batch does: shoppers' requests overtake it between chunks), each result encoded
and settled as its chunk comes out. A canceled or expired job's next chunk is not run.
While a task runs, the store is told so every third of TRYON_JOBS_CLAIM_AFTER_S; a
replica that dies stops telling it, and another takes the task over, running only
what was not settled. A queue that refuses for now (full, overloaded, shutting down)
is waited out, not counted as the garment's failure; so are the bytes in flight of the
process (service/limits.py), taken for a task's decoding before it starts. Anything else
that goes wrong with a garment (a decoder's or an encoder's surprise) settles it as
failed, so no job is left running for ever; and every SWEEP_S the store ends the jobs
past their deadline that no task came to end (JobStore.expire_overdue).
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch

from model.images import TryOnInputs

from .. import tracing
from ..codec.errors import ApiError, from_queue_error
from ..codec.output import OutputOptions, encode_output
from ..codec.person import decode_bytes, decode_garments, decode_person
from ..codec.sources import RequestParts
from ..limits import ByteBudget, OverBudget
from ..metrics import Metrics
from ..queue.interface import WorkQueue
from ..queue.work import GarmentsInputs, GarmentsStream
from ..queue.outcomes import (DeadlineExceeded, DeadlineTooShort, DeviceFailed, DeviceOutOfMemory, EngineUnreachable, Overloaded,
                              QueueError, QueueFull, ShuttingDown)
from ..queue.priority import Priority
from ..settings import Settings
from .records import GarmentState, JobError, JobInputs, JobRecord, JobStatus, Task
from .store import JobStore, StoreUnavailable

log = logging.getLogger("service.jobs")
# Refusals that say "later", not "this garment cannot be done".
TRANSIENT = (QueueFull, Overloaded, ShuttingDown, EngineUnreachable, DeviceOutOfMemory, DeviceFailed)
POLL_S = 1.0
SWEEP_S = 10.0


@dataclass(frozen=True)
class DecodedTask:
    """A task's garments ready for the model (or each one's error), and the frame a result maps back
    through (into the person's photo for ``size=original``)."""
    frame: object
    garments: list[TryOnInputs | JobError]


class JobCodec(Protocol):
    """What this room asks the codec room for (``TaskCodec``; a test may stand in for it)."""

    def decode(self, inputs: JobInputs, options: dict) -> DecodedTask:
        """(In a thread.) A person-side failure is every garment's error."""

    def decode_bytes(self, inputs: JobInputs) -> int:
        """What ``decode`` will hold at its peak, from the images' headers."""

    def encode(self, output: torch.Tensor, frame: object, options: dict) -> bytes:
        """(In a thread.) One result in the job's output options."""

    def error_of(self, exc: QueueError) -> JobError: ...


class TaskCodec:
    """A task decoded and encoded by the codec (service/codec/) as /v1/tryon/batch is, so a job's
    results and errors are /v1/tryon's: the person framed once for the task's garments, and with
    ``size=original`` each result composited into the photo."""

    def __init__(self, settings: Settings):
        self.settings = settings

    def decode(self, inputs: JobInputs, options: dict) -> DecodedTask:
        cloths = [ApiError(c.status, c.code, c.message, c.field) if isinstance(c, JobError) else c
                  for c in inputs.cloths]
        try:
            person = decode_person(RequestParts(dict(inputs.person), inputs.keypoints, cloths), self.settings,
                                   keep_photo=OutputOptions.model_validate(options).size == "original")
        except ApiError as exc:
            return DecodedTask(None, [JobError.of(exc)] * len(cloths))
        garments = decode_garments(person, cloths, self.settings)
        return DecodedTask(person.output_frame, [JobError.of(g) if isinstance(g, ApiError) else g for g in garments])

    def decode_bytes(self, inputs: JobInputs) -> int:
        cloths = [c for c in inputs.cloths if isinstance(c, bytes)]
        return decode_bytes(RequestParts(dict(inputs.person), inputs.keypoints, cloths), self.settings, 1 << 62, "many")

    def encode(self, output: torch.Tensor, frame: object, options: dict) -> bytes:
        return encode_output(output, frame, OutputOptions.model_validate(options))

    def error_of(self, exc: QueueError) -> JobError:
        return JobError.of(from_queue_error(exc))


class Interrupted(Exception):
    """The task stops unfinished (the replica is stopping): left for a replica to take up."""


@dataclass(eq=False)
class JobRunner:
    store: JobStore
    queue: WorkQueue
    codec: JobCodec
    chunk_size: int
    concurrency: int
    keep_every_s: float
    metrics: Metrics
    budget: ByteBudget | None = None
    # The wall clock that jobs' deadlines are read against (a test may drive its own).
    clock: Callable[[], float] = time.time
    stopping: asyncio.Event = field(default_factory=asyncio.Event, init=False)

    async def run(self) -> None:
        await asyncio.gather(self._sweeper(), *(self._worker() for _ in range(self.concurrency)))

    async def _sweeper(self) -> None:
        while not self.stopping.is_set():
            try:
                for _ in range(await self.store.expire_overdue()):
                    self.ended(JobStatus.EXPIRED)
            except StoreUnavailable as exc:
                log.warning("expiring overdue jobs: %s", exc)
            await asyncio.sleep(SWEEP_S)

    async def _worker(self) -> None:
        while not self.stopping.is_set():
            try:
                task = await self.store.next_task(POLL_S)
                if task is not None:
                    await self._keeping(task)
                    await self.store.finish_task(task)
            except StoreUnavailable as exc:
                log.warning("job tasks: %s", exc)
                await asyncio.sleep(POLL_S)
            except Interrupted:
                return
            except Exception:  # noqa: BLE001  (one task's bug must not stop the worker)
                log.exception("job task failed")
                await asyncio.sleep(POLL_S)

    async def _keeping(self, task: Task) -> None:
        """Runs the task, telling the store it is still this replica's."""
        async def keep():
            while True:
                await asyncio.sleep(self.keep_every_s)
                try:
                    await self.store.keep(task.ref)
                except StoreUnavailable:
                    pass
        keeper = asyncio.get_running_loop().create_task(keep())
        try:
            await self._run(task)
        except (Interrupted, StoreUnavailable, asyncio.CancelledError):
            raise
        except Exception as exc:  # noqa: BLE001  (a surprise fails the task's garments, never leaves them running)
            log.exception("job task failed", extra={"job": task.job_id})
            await self._fail_unsettled(task, JobError(500, "internal", f"the garment could not be done "
                                                                      f"({type(exc).__name__})"))
        finally:
            keeper.cancel()

    async def _fail_unsettled(self, task: Task, error: JobError) -> None:
        record = await self.store.record(task.job_id)
        if record is None or record.status.ended:
            return
        for index in range(task.start, task.start + task.count):
            if index not in record.settled:
                await self._settle(record, index, GarmentState(error), None)

    async def _decode(self, inputs: JobInputs, options: dict) -> DecodedTask:
        """The task decoded once the bytes in flight have room for it (waited for: a job has time)."""
        needed = 0
        if self.budget is not None:
            needed = min(self.codec.decode_bytes(inputs), self.budget.limit)
            while True:
                try:
                    self.budget.take(needed, "a job's decoding")
                    break
                except OverBudget:
                    if self.stopping.is_set():
                        raise Interrupted from None
                    await asyncio.sleep(POLL_S)
        try:
            return await asyncio.to_thread(self.codec.decode, inputs, options)
        finally:
            if self.budget is not None:
                self.budget.give(needed)

    def ended(self, status: JobStatus | None) -> None:
        if status is not None and status.ended:
            self.metrics.jobs.labels(status.value).inc()

    @tracing.traced("job.task")  # one trace per task: its decode, queue waits and encodes
    async def _run(self, task: Task) -> None:
        record = await self.store.record(task.job_id)
        if record is None or record.status.ended:
            return
        if self.clock() >= record.deadline_at:
            if await self.store.end(task.job_id, JobStatus.EXPIRED):
                self.ended(JobStatus.EXPIRED)
            return
        inputs = await self.store.task_inputs(task)
        if inputs is None:
            return
        if record.status is JobStatus.QUEUED:
            await self.store.start(task.job_id)
            self.metrics.jobs.labels(JobStatus.RUNNING.value).inc()
        decoded = await self._decode(inputs, record.options)
        to_run: list[tuple[int, TryOnInputs]] = []
        for offset, garment in enumerate(decoded.garments):
            index = task.start + offset
            if index in record.settled:
                continue
            if isinstance(garment, JobError):
                await self._settle(record, index, GarmentState(garment), None)
            else:
                to_run.append((index, garment))
        if to_run:
            await self._dress(record, decoded.frame, to_run)

    async def _settle(self, record: JobRecord, index: int, state: GarmentState, result: bytes | None) -> bool:
        status = await self.store.settle(record.id, index, state, result)
        if status is not None:
            self.metrics.job_garments.labels("failed" if state.error else "succeeded").inc()
        self.ended(status)
        return status is not None

    async def _submit(self, inputs: GarmentsInputs, deadline_at: float) -> GarmentsStream:
        """The queue's answer, waiting out its refusals for now (Interrupted when stopping), but not past the
        job's deadline: a refusal then (admission's Overloaded says "not by your deadline", and it never will
        be) is the deadline's, so the job expires instead of waiting for ever."""
        while True:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + max(0.0, deadline_at - self.clock())
            try:
                return await self.queue.submit(inputs, deadline, Priority.BULK).future
            except TRANSIENT as exc:
                if self.stopping.is_set() or isinstance(exc, ShuttingDown):
                    raise Interrupted from None
                left = deadline_at - self.clock()
                if left <= 0:
                    raise DeadlineExceeded(f"the job's deadline passed while the queue refused it: {exc.message}") \
                        from None
                await asyncio.sleep(min(exc.retry_after_s or POLL_S, left))

    async def _expired(self, record: JobRecord, exc: QueueError) -> bool:
        """The queue gave up at the job's deadline, or says it can never be met: the job expires (not its
        garments fail)."""
        overdue = isinstance(exc, DeadlineExceeded) and self.clock() >= record.deadline_at
        if not (overdue or isinstance(exc, DeadlineTooShort)):
            return False
        if await self.store.end(record.id, JobStatus.EXPIRED):
            self.ended(JobStatus.EXPIRED)
        return True

    async def _dress(self, record: JobRecord, frame, to_run: list[tuple[int, TryOnInputs]]) -> None:
        try:
            stream = await self._submit(GarmentsInputs.of([g for _, g in to_run], self.chunk_size), record.deadline_at)
        except QueueError as exc:
            if await self._expired(record, exc):
                return
            for index, _ in to_run:
                await self._settle(record, index, GarmentState(self.codec.error_of(exc)), None)
            return
        chunks = stream.chunks()
        try:
            async for item in chunks:
                if isinstance(item, TRANSIENT):
                    raise Interrupted
                if isinstance(item, QueueError):  # every garment not yet delivered fails with it
                    if await self._expired(record, item):
                        return
                    done = await self.store.record(record.id)
                    for index, _ in to_run:
                        if done is not None and index not in done.settled:
                            await self._settle(record, index, GarmentState(self.codec.error_of(item)), None)
                    return
                for k, output in enumerate(item.outputs):
                    index = to_run[item.start + k][0]
                    try:
                        body = await asyncio.to_thread(self.codec.encode, output, frame, record.options)
                    except Exception as exc:  # noqa: BLE001  (this garment fails; the others go on)
                        log.exception("job result not encoded", extra={"job": record.id})
                        error = JobError(500, "encode_failed", f"the result could not be encoded ({exc})")
                        await self._settle(record, index, GarmentState(error), None)
                        continue
                    if not await self._settle(record, index, GarmentState(), body):
                        current = await self.store.record(record.id)
                        if current is None or current.status.ended:  # canceled or expired: run no more
                            return
        finally:
            stream.close()
            await chunks.aclose()
