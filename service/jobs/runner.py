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
is waited out, not counted as the garment's failure.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from model.images import TryOnInputs, stack_levels

from ..codec.errors import ApiError, from_queue_error
from ..codec.output import OutputOptions, encode_output
from ..codec.person import decode_garments, decode_person
from ..codec.sources import RequestParts
from ..metrics import Metrics
from ..queue.interface import JobQueue
from ..queue.jobs import GarmentsInputs, GarmentsStream
from ..queue.outcomes import (DeadlineExceeded, DeviceFailed, DeviceOutOfMemory, EngineUnreachable, Overloaded, Priority, QueueError,
                              QueueFull, ShuttingDown)
from ..settings import Settings
from .records import GarmentState, JobError, JobInputs, JobRecord, JobStatus, Task
from .store import JobStore, StoreUnavailable

log = logging.getLogger("service.jobs")
# Refusals that say "later", not "this garment cannot be done".
TRANSIENT = (QueueFull, Overloaded, ShuttingDown, EngineUnreachable, DeviceOutOfMemory, DeviceFailed)
POLL_S = 1.0


@dataclass(frozen=True)
class DecodedTask:
    """A task's garments ready for the model (or each one's error), and the frame a result maps back
    through (into the person's photo for ``size=original``)."""
    frame: object
    garments: list[TryOnInputs | JobError]


def decode_task(inputs: JobInputs, settings: Settings, options: OutputOptions) -> DecodedTask:
    """(In a thread.) A task's person, framed once, and its garments, decoded as /v1/tryon/batch
    decodes them; a person-side failure is every garment's error."""
    cloths = [ApiError(c.status, c.code, c.message, c.field) if isinstance(c, JobError) else c for c in inputs.cloths]
    try:
        person = decode_person(RequestParts(dict(inputs.person), inputs.keypoints, cloths), settings,
                               keep_photo=options.size == "original")
    except ApiError as exc:
        return DecodedTask(None, [JobError.of(exc)] * len(cloths))
    garments = decode_garments(person, cloths, settings)
    return DecodedTask(person.output_frame, [JobError.of(g) if isinstance(g, ApiError) else g for g in garments])


def error_of(exc: QueueError) -> JobError:
    return JobError.of(from_queue_error(exc))


class Interrupted(Exception):
    """The task stops unfinished (the replica is stopping): left for a replica to take up."""


class JobRunner:
    def __init__(self, store: JobStore, queue: JobQueue, settings: Settings, chunk_size: int, concurrency: int,
                 keep_every_s: float, metrics: Metrics):
        self.store = store
        self.queue = queue
        self.settings = settings
        self.chunk_size = chunk_size
        self.concurrency = concurrency
        self.keep_every_s = keep_every_s
        self.metrics = metrics
        self.stopping = asyncio.Event()

    async def run(self) -> None:
        await asyncio.gather(*(self._worker() for _ in range(self.concurrency)))

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
        finally:
            keeper.cancel()

    def ended(self, status: JobStatus | None) -> None:
        if status is not None and status.ended:
            self.metrics.jobs.labels(status.value).inc()

    async def _run(self, task: Task) -> None:
        record = await self.store.record(task.job_id)
        if record is None or record.status.ended:
            return
        if time.time() >= record.deadline_at:
            if await self.store.end(task.job_id, JobStatus.EXPIRED):
                self.ended(JobStatus.EXPIRED)
            return
        inputs = await self.store.task_inputs(task)
        if inputs is None:
            return
        if record.status is JobStatus.QUEUED:
            await self.store.start(task.job_id)
            self.metrics.jobs.labels(JobStatus.RUNNING.value).inc()
        options = OutputOptions.model_validate(record.options)
        decoded = await asyncio.to_thread(decode_task, inputs, self.settings, options)
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
            await self._dress(record, decoded.frame, to_run, options)

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
            deadline = loop.time() + max(0.0, deadline_at - time.time())
            try:
                return await self.queue.submit(inputs, deadline, Priority.BULK).future
            except TRANSIENT as exc:
                if self.stopping.is_set() or isinstance(exc, ShuttingDown):
                    raise Interrupted from None
                left = deadline_at - time.time()
                if left <= 0:
                    raise DeadlineExceeded(f"the job's deadline passed while the queue refused it: {exc.message}") \
                        from None
                await asyncio.sleep(min(exc.retry_after_s or POLL_S, left))

    async def _expired(self, record: JobRecord, exc: QueueError) -> bool:
        """The queue gave up at the job's deadline: the job expires (not its garments fail)."""
        if not isinstance(exc, DeadlineExceeded) or time.time() < record.deadline_at:
            return False
        if await self.store.end(record.id, JobStatus.EXPIRED):
            self.ended(JobStatus.EXPIRED)
        return True

    async def _dress(self, record: JobRecord, frame, to_run: list[tuple[int, TryOnInputs]],
                     options: OutputOptions) -> None:
        first = to_run[0][1]
        inputs = GarmentsInputs(first.pose, first.masked_model, stack_levels([g.cloth for _, g in to_run]),
                                self.chunk_size)
        try:
            stream = await self._submit(inputs, record.deadline_at)
        except QueueError as exc:
            if await self._expired(record, exc):
                return
            for index, _ in to_run:
                await self._settle(record, index, GarmentState(error_of(exc)), None)
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
                            await self._settle(record, index, GarmentState(error_of(item)), None)
                    return
                for k, output in enumerate(item.outputs):
                    index = to_run[item.start + k][0]
                    body = await asyncio.to_thread(encode_output, output, frame, options)
                    if not await self._settle(record, index, GarmentState(), body):
                        current = await self.store.record(record.id)
                        if current is None or current.status.ended:  # canceled or expired: run no more
                            return
        finally:
            stream.close()
            await chunks.aclose()
