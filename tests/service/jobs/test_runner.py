"""The job runner with the embedded store and a real batcher over the stand-in engine: a garment
that fails in any way (here its encoder raises, as WebP did past 16383 pixels) settles as failed
while the others are dressed, so the job ends; a task whose decoding raises fails its garments
instead of leaving the job running for ever; and a job past its deadline is expired by the sweep
although no task is left to notice it."""
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
from tests.fixtures.standin_engine import StandInEngine


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
