"""The job runner (service/jobs/runner.py) in this process, with the embedded store: over a real
batcher and the stand-in engine, a garment that fails in any way (here its encoder raises, as WebP
did past 16383 pixels) settles as failed while the others are dressed, so the job ends; a task whose
decoding raises fails its garments instead of leaving the job running for ever; a job past its
deadline is expired by the sweep although no task is left to notice it. On a fake clock (the
runner's and the store's ``clock``): a job whose deadline passed is expired, not run; a queue that
refuses for now is waited out until the job's deadline, and then the job expires (its garments do
not fail). Across replicas, end to end: tests/service/jobs/test_wiring.py."""
from __future__ import annotations

import asyncio
import time

import torch

from model.images import Letterbox, TryOnInputs
from service.jobs.records import JobError, JobInputs, JobStatus, NewJob, new_job_id
from service.jobs.runner import DecodedTask, JobRunner
from service.jobs.store import MemoryJobStore
from service.limits import ByteBudget
from service.metrics import Metrics
from service.queue.batcher import Batcher
from service.queue.outcomes import QueueFull
from service.queue.priority import Priority
from tests.fixtures.standin_engine import StandInEngine
from tests.utils.clock import FakeClock


def garment(tag: int) -> TryOnInputs:
    levels = torch.full((3, 4, 4), tag, dtype=torch.uint8)
    return TryOnInputs(levels, levels, levels, Letterbox((4, 4), (4, 4)))


class Codec:
    """Bytes in, a garment per byte out; ``encode`` raises for the garment tagged ``broken``."""

    def __init__(self, broken: int | None = None, decode_fails: bool = False):
        self.broken = broken
        self.decode_fails = decode_fails

    def decode(self, inputs: JobInputs, options: dict) -> DecodedTask:
        if self.decode_fails:
            raise MemoryError("a decoder's surprise")
        return DecodedTask(None, [garment(c[0]) for c in inputs.cloths])

    def decode_bytes(self, inputs: JobInputs) -> int:
        return 1000

    def encode(self, output: torch.Tensor, frame, options: dict) -> bytes:
        tag = int(output[0, 0, 0])
        if tag == self.broken:
            raise OSError("encoder error -2 when writing image file")
        return bytes([tag])

    def error_of(self, exc):
        return JobError(500, "inference_failed", str(exc))


async def run_job(codec: Codec, cloths: list[bytes], deadline_s: float = 60):
    store = MemoryJobStore(max_jobs=10, max_bytes=1 << 20, retention_s=60, task_garments=2)
    metrics = Metrics(2)
    batcher = Batcher(StandInEngine(), max_batch_size=2, max_wait_s=0.0, queue_limit=8, metrics=metrics)
    batcher.start()
    budget = ByteBudget(1 << 20)
    runner = JobRunner(store, batcher, codec, 2, 1, 30, metrics, budget)
    job = NewJob(new_job_id(), "", {"format": "png"}, JobInputs({}, None, cloths), time.time() + deadline_s)
    job_id, _ = await store.create(job)
    running = asyncio.get_running_loop().create_task(runner.run())
    try:
        end = time.monotonic() + 20
        while not (await store.record(job_id)).status.ended and time.monotonic() < end:
            await asyncio.sleep(0.02)
        return await store.record(job_id), budget.used
    finally:
        runner.stopping.set()
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await batcher.stop()


def test_a_garment_whose_encoder_fails_settles_as_failed_and_the_others_are_dressed():
    record, held = asyncio.run(run_job(Codec(broken=2), [b"\x01", b"\x02", b"\x03"]))
    assert record.status is JobStatus.SUCCEEDED and record.done == 3
    assert record.settled[1].error.code == "encode_failed" and "encoder error" in record.settled[1].error.message
    assert record.settled[0].error is None and record.settled[2].error is None
    assert held == 0  # the task's decoding bytes were given back


def test_a_task_whose_decoding_raises_fails_its_garments_and_the_job_ends():
    record, _ = asyncio.run(run_job(Codec(decode_fails=True), [b"\x01", b"\x02", b"\x03"]))
    assert record.status is JobStatus.FAILED and record.done == 3
    assert {state.error.code for state in record.settled.values()} == {"internal"}


def test_a_job_past_its_deadline_is_swept_though_no_task_is_left():
    async def scenario():
        store = MemoryJobStore(max_jobs=2, max_bytes=1 << 20, retention_s=60, task_garments=1)
        overdue = NewJob(new_job_id(), "", {}, JobInputs({}, None, [b"x"]), time.time() - 1)
        first, _ = await store.create(overdue)
        store._tasks.clear()  # its task lost (claimed by a replica that died, say)
        swept = await store.expire_overdue()
        first_status = (await store.record(first)).status
        # The limits count live jobs only: overdue ones hold no place (max_jobs 2; they end, then make room).
        for _ in range(2):
            await store.create(NewJob(new_job_id(), "", {}, JobInputs({}, None, [b"x"]), time.time() - 1))
        fresh, _ = await store.create(NewJob(new_job_id(), "", {}, JobInputs({}, None, [b"x"]), time.time() + 60))
        return swept, first_status, await store.record(fresh)

    swept, first_status, fresh = asyncio.run(scenario())
    assert swept == 1 and first_status is JobStatus.EXPIRED and fresh.status is JobStatus.QUEUED


def job_total(metrics: Metrics, status: str) -> float:
    return metrics.registry.get_sample_value("tryon_jobs_total", {"status": status}) or 0.0


async def until_ended(store: MemoryJobStore, job_id: str, timeout: float = 20):
    """The job's record once it has ended (polled; ``timeout`` real seconds at most)."""
    end = time.monotonic() + timeout
    while not (record := await store.record(job_id)).status.ended:
        assert time.monotonic() < end, f"the job is still {record.status.value}"
        await asyncio.sleep(0.01)
    return record


async def run_until_ended(runner: JobRunner, store: MemoryJobStore, job_id: str):
    running = asyncio.get_running_loop().create_task(runner.run())
    try:
        return await until_ended(store, job_id)
    finally:
        runner.stopping.set()
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


def test_a_job_whose_deadline_passed_on_the_clock_is_expired_and_never_run():
    async def scenario():
        clock = FakeClock()
        store = MemoryJobStore(max_jobs=10, max_bytes=1 << 20, retention_s=60, task_garments=2, clock=clock)
        engine, metrics = StandInEngine(), Metrics(2)
        batcher = Batcher(engine, max_batch_size=2, max_wait_s=0.0, queue_limit=8, metrics=metrics)
        batcher.start()
        runner = JobRunner(store, batcher, Codec(), 2, 1, 30, metrics, clock=clock)
        job_id, _ = await store.create(NewJob(new_job_id(), "", {}, JobInputs({}, None, [b"\x01", b"\x02"]),
                                              clock() + 60))
        expired = job_total(metrics, "expired")
        clock.advance(61)  # past the deadline on the clock; a moment in real time
        try:
            record = await run_until_ended(runner, store, job_id)
        finally:
            await batcher.stop()
        return record, engine.calls, job_total(metrics, "expired") - expired

    record, calls, expired = asyncio.run(scenario())
    assert record.status is JobStatus.EXPIRED and record.settled == {} and calls == []
    assert expired == 1


class RefusingQueue:
    """A queue full for now at every submission (Retry-After 10 ms), whose each refusal takes
    ``refusal_s`` of the clock: the runner waits them out until the job's deadline."""

    def __init__(self, clock: FakeClock, refusal_s: float):
        self.clock, self.refusal_s = clock, refusal_s
        self.submitted: list[Priority] = []

    def submit(self, inputs, deadline: float, priority: Priority = Priority.INTERACTIVE):
        self.submitted.append(priority)
        self.clock.advance(self.refusal_s)
        raise QueueFull("the queue is full", retry_after_s=0.01)


def test_a_queue_full_for_now_is_waited_out_until_the_deadline_then_the_job_expires():
    async def scenario():
        clock = FakeClock()
        store = MemoryJobStore(max_jobs=10, max_bytes=1 << 20, retention_s=60, task_garments=2, clock=clock)
        queue, metrics = RefusingQueue(clock, refusal_s=10), Metrics(2)
        runner = JobRunner(store, queue, Codec(), 2, 1, 30, metrics, clock=clock)
        job_id, _ = await store.create(NewJob(new_job_id(), "", {}, JobInputs({}, None, [b"\x01", b"\x02"]),
                                              clock() + 25))
        record = await run_until_ended(runner, store, job_id)
        failed = metrics.registry.get_sample_value("tryon_job_garments_total", {"outcome": "failed"}) or 0.0
        return record, queue.submitted, job_total(metrics, "expired"), failed

    record, submitted, expired, failed = asyncio.run(scenario())
    # Refused at 0, 10 and 20 s of the clock, each refusal taking 10 s: the third ends past the 25 s deadline.
    assert submitted == [Priority.BULK] * 3
    assert record.status is JobStatus.EXPIRED and record.settled == {} and expired == 1 and failed == 0
