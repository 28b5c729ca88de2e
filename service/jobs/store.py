"""Where jobs are kept: the ``JobStore`` interface, and the embedded store.

Two stores behind one interface. The embedded one (no TRYON_JOBS_URL) keeps jobs in
this process: bounded by TRYON_JOBS_MEMORY_JOBS and TRYON_JOBS_MEMORY_BYTES, lost on
restart, seen only by this process (so the settings refuse it with TRYON_WORKERS > 1).
The Redis one (redis_store.py) is shared by every replica and outlives any of them.

A job is split into tasks of TRYON_JOBS_TASK_GARMENTS garments; replicas take tasks,
so one job spreads over all of them. Settling a garment (its result or error stored) is
idempotent: a task run twice (its replica died) settles nothing twice. The settling of a
job's last garment, or a cancel, or an expiry, ends the job and, in the same step, queues
its webhook delivery, so no end goes unannounced.
"""
from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from typing import Callable, Protocol

from .records import (ACTIVE, RECORD_KEPT_RETENTIONS, Delivery, GarmentState, JobInputs, JobRecord, JobStatus,
                      NewJob, Task, final_status)


class StoreUnavailable(Exception):
    """The store did not answer (Redis down or slow): nothing was stored."""


class StoreFull(Exception):
    """The embedded store holds as many jobs or bytes as it may (for now: running jobs end)."""


class JobTooLarge(Exception):
    """A job with more bytes than the embedded store may hold at all: it would never fit."""


class IdempotencyKeyReused(Exception):
    """The Idempotency-Key was used before by the same owner for another request: nothing was stored."""


class JobStore(Protocol):
    name: str  # "memory" or "redis"
    shared: bool  # whether other replicas see the same jobs
    failure: str | None  # why the last operation failed (StoreUnavailable); None: it worked

    async def create(self, job: NewJob) -> tuple[str, bool]:
        """Stores the job and queues its tasks: (its id, True); or, when ``job.idempotency_key`` was
        used before by the same owner, (that job's id, False) and nothing is stored; IdempotencyKeyReused
        when that job's fingerprint is another."""

    async def record(self, job_id: str) -> JobRecord | None: ...

    async def result(self, job_id: str, index: int) -> bytes | None: ...

    async def end(self, job_id: str, status: JobStatus) -> bool:
        """Cancels or expires a job still queued or running (its webhook queued); False when it had ended."""

    async def start(self, job_id: str) -> None:
        """Marks a queued job running (once)."""

    async def settle(self, job_id: str, index: int, state: GarmentState, result: bytes | None) -> JobStatus | None:
        """Stores one garment's outcome (once): the job's status after it (the last one ends the job), or
        None when the job had ended (canceled or expired: the result is dropped) or the garment was settled."""

    async def next_task(self, wait_s: float) -> Task | None:
        """A task to run (new, or another replica's left idle TRYON_JOBS_CLAIM_AFTER_S); None after ``wait_s``."""

    async def task_inputs(self, task: Task) -> JobInputs | None:
        """The person side and the task's garments (None when the job is gone)."""

    async def keep(self, ref: str, deliveries: bool = False) -> None:
        """Tells the store a claimed task (or delivery) is still being worked on."""

    async def finish_task(self, task: Task) -> None: ...

    async def next_delivery(self, wait_s: float) -> Delivery | None: ...

    async def finish_delivery(self, delivery: Delivery) -> None: ...

    async def oldest_queued_s(self) -> float:
        """Age of the oldest task no replica has taken (0 when none waits)."""

    async def expire_overdue(self) -> int:
        """Ends every job still queued or running past its deadline as expired (its webhook queued), whether
        or not a task of it is left to notice: how many it ended."""

    async def close(self) -> None: ...


class MemoryJobStore:
    """Jobs in this process. An ended job's results are dropped TRYON_JOBS_RETENTION_S after it ends (a result
    asked for then is a 410, as with Redis), its record RECORD_KEPT_RETENTIONS times as long; ended jobs go
    sooner, oldest first, to make room for a new one, and jobs past their deadline are expired first, so the
    limits count only live jobs. A new job that would not fit beside the live ones is refused for now
    (StoreFull); one larger than the whole store, for good (JobTooLarge)."""
    name = "memory"
    shared = False
    failure = None  # in this process: never unreachable

    def __init__(self, max_jobs: int, max_bytes: int, retention_s: float, task_garments: int,
                 clock: Callable[[], float] = time.time):
        """``clock``: the wall clock of deadlines and retention (a test may drive its own)."""
        self.clock = clock
        self.max_jobs = max_jobs
        self.max_bytes = max_bytes
        self.retention_s = retention_s
        self.task_garments = task_garments
        self._records: OrderedDict[str, JobRecord] = OrderedDict()
        self._inputs: dict[str, JobInputs] = {}
        self._results: dict[str, dict[int, bytes]] = {}
        self._idempotent: dict[tuple[str, str], tuple[str, str]] = {}  # (owner, key) -> (job id, fingerprint)
        self._tasks: deque[tuple[Task, float]] = deque()
        self._deliveries: deque[Delivery] = deque()
        self._changed = asyncio.Event()
        self.bytes = 0

    def _size(self, job_id: str) -> int:
        inputs = self._inputs.get(job_id)
        return (inputs.size if inputs else 0) + sum(map(len, self._results.get(job_id, {}).values()))

    def _drop(self, job_id: str) -> None:
        self.bytes -= self._size(job_id)
        record = self._records.pop(job_id)
        self._inputs.pop(job_id, None)
        self._results.pop(job_id, None)
        self._idempotent = {k: v for k, v in self._idempotent.items() if v[0] != record.id}

    def _age_out(self, job_id: str, record: JobRecord, now: float) -> bool:
        """Drops an ended job's results after the retention, and the job after RECORD_KEPT_RETENTIONS of it:
        whether the job is gone."""
        if record.finished_at is None or now - record.finished_at < self.retention_s:
            return False
        if now - record.finished_at >= self.retention_s * RECORD_KEPT_RETENTIONS:
            self._drop(job_id)
            return True
        self.bytes -= sum(map(len, self._results.get(job_id, {}).values()))
        self._results[job_id] = {}
        return False

    def _make_room(self, need: int) -> None:
        if need > self.max_bytes:
            raise JobTooLarge(f"the job's {need} bytes are more than the embedded job store holds "
                              f"(TRYON_JOBS_MEMORY_BYTES {self.max_bytes})")
        now = self.clock()
        self._expire(now)
        for job_id, record in list(self._records.items()):
            self._age_out(job_id, record, now)
        for job_id, record in list(self._records.items()):  # oldest first
            if len(self._records) < self.max_jobs and self.bytes + need <= self.max_bytes:
                return
            if record.status.ended:
                self._drop(job_id)
        if len(self._records) >= self.max_jobs or self.bytes + need > self.max_bytes:
            raise StoreFull(f"the embedded job store holds {len(self._records)} jobs and {self.bytes} bytes "
                            f"(TRYON_JOBS_MEMORY_JOBS {self.max_jobs}, TRYON_JOBS_MEMORY_BYTES {self.max_bytes})")

    def _expire(self, now: float) -> int:
        overdue = [r for r in self._records.values() if not r.status.ended and r.deadline_at <= now]
        for record in overdue:
            self._end(record, JobStatus.EXPIRED)
        return len(overdue)

    async def expire_overdue(self) -> int:
        return self._expire(self.clock())

    async def create(self, job: NewJob) -> tuple[str, bool]:
        key = (job.owner, job.idempotency_key) if job.idempotency_key else None
        if key in self._idempotent and self._idempotent[key][0] in self._records:
            job_id, fingerprint = self._idempotent[key]
            if fingerprint != job.fingerprint:
                raise IdempotencyKeyReused(job_id)
            return job_id, False
        self._make_room(job.inputs.size)
        self._records[job.id] = JobRecord(job.id, job.owner, JobStatus.QUEUED, job.garments, job.options,
                                          job.created_at, job.deadline_at, job.webhook_url)
        self._inputs[job.id] = job.inputs
        self._results[job.id] = {}
        self.bytes += job.inputs.size
        if key:
            self._idempotent[key] = (job.id, job.fingerprint)
        now = time.monotonic()
        for start in range(0, job.garments, self.task_garments):
            self._tasks.append((Task(job.id, start, min(self.task_garments, job.garments - start)), now))
        self._changed.set()
        return job.id, True

    async def record(self, job_id: str) -> JobRecord | None:
        record = self._records.get(job_id)
        if record is not None and self._age_out(job_id, record, self.clock()):
            return None
        return record

    async def result(self, job_id: str, index: int) -> bytes | None:
        return self._results.get(job_id, {}).get(index)

    def _end(self, record: JobRecord, status: JobStatus) -> None:
        record.status, record.finished_at = status, self.clock()
        self.bytes -= self._inputs.pop(record.id).size
        if record.webhook_url:
            self._deliveries.append(Delivery(record.id))
            self._changed.set()

    async def end(self, job_id: str, status: JobStatus) -> bool:
        record = self._records.get(job_id)
        if record is None or record.status.ended:
            return False
        self._end(record, status)
        return True

    async def start(self, job_id: str) -> None:
        record = self._records.get(job_id)
        if record is not None and record.status is JobStatus.QUEUED:
            record.status, record.started_at = JobStatus.RUNNING, self.clock()

    async def settle(self, job_id: str, index: int, state: GarmentState, result: bytes | None) -> JobStatus | None:
        record = self._records.get(job_id)
        if record is None or record.status.value not in ACTIVE or index in record.settled:
            return None
        record.settled[index] = state
        if result is not None:
            self._results[job_id][index] = result
            self.bytes += len(result)
        if record.done == record.garments:
            self._end(record, final_status(record.settled))
        return record.status

    async def _next(self, items: deque, wait_s: float):
        end = time.monotonic() + wait_s
        while not items:
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), max(0.0, end - time.monotonic()))
            except TimeoutError:
                return None
        return items.popleft()

    async def next_task(self, wait_s: float) -> Task | None:
        item = await self._next(self._tasks, wait_s)
        return item[0] if item else None

    async def task_inputs(self, task: Task) -> JobInputs | None:
        inputs = self._inputs.get(task.job_id)
        if inputs is None:
            return None
        return JobInputs(inputs.person, inputs.keypoints, inputs.cloths[task.start:task.start + task.count])

    async def keep(self, ref: str, deliveries: bool = False) -> None:
        pass

    async def finish_task(self, task: Task) -> None:
        pass

    async def next_delivery(self, wait_s: float) -> Delivery | None:
        return await self._next(self._deliveries, wait_s)

    async def finish_delivery(self, delivery: Delivery) -> None:
        pass

    async def oldest_queued_s(self) -> float:
        return time.monotonic() - self._tasks[0][1] if self._tasks else 0.0

    async def close(self) -> None:
        pass
