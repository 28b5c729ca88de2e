"""The embedded job store in this process: its bounds (jobs, bytes: a store full for now, a job that would
never fit), ended jobs making room oldest first, and retention on a fake clock (results, then the record)."""
from __future__ import annotations

import asyncio
import time

import pytest

from service.jobs.records import GarmentState, JobInputs, JobStatus, NewJob, new_job_id
from service.jobs.store import JobTooLarge, MemoryJobStore, StoreFull
from tests.utils.clock import FakeClock


def job(clock=time.time, cloth_bytes: int = 10) -> NewJob:
    inputs = JobInputs({"masked_model": b"m" * 10, "pose": b"p" * 10}, None, [b"c" * cloth_bytes])
    return NewJob(new_job_id(), "", {"format": "png"}, inputs, clock() + 600)


def run(coroutine):
    return asyncio.run(coroutine)


def test_running_jobs_fill_the_store_for_now_and_an_ended_one_makes_room():
    async def scenario():
        store = MemoryJobStore(max_jobs=2, max_bytes=1000, retention_s=60, task_garments=1)
        first, _ = await store.create(job())
        await store.create(job())
        with pytest.raises(StoreFull, match="TRYON_JOBS_MEMORY_JOBS 2"):
            await store.create(job())
        await store.settle(first, 0, GarmentState(), b"result")  # ends it: the oldest ended job goes
        third, _ = await store.create(job())
        return first, third, store

    first, third, store = run(scenario())
    assert first not in store._records and third in store._records and len(store._records) == 2


def test_bytes_bound_the_store_and_a_job_larger_than_it_is_refused_for_good():
    async def scenario():
        store = MemoryJobStore(max_jobs=10, max_bytes=100, retention_s=60, task_garments=1)
        await store.create(job(cloth_bytes=40))  # 60 bytes
        with pytest.raises(StoreFull, match="TRYON_JOBS_MEMORY_BYTES 100"):
            await store.create(job(cloth_bytes=40))
        with pytest.raises(JobTooLarge, match="TRYON_JOBS_MEMORY_BYTES 100"):
            await store.create(job(cloth_bytes=200))
        return store

    assert run(scenario()).bytes == 60


def test_results_go_after_the_retention_and_the_record_after_twice_it():
    async def scenario():
        clock = FakeClock()
        store = MemoryJobStore(max_jobs=10, max_bytes=1000, retention_s=60, task_garments=1, clock=clock)
        job_id, _ = await store.create(job(clock))
        assert await store.settle(job_id, 0, GarmentState(), b"result") is JobStatus.SUCCEEDED
        clock.advance(59.9)
        kept = await store.result(job_id, 0)
        clock.advance(0.2)  # past the retention
        record = await store.record(job_id)
        after_retention = (record.status, 0 in record.settled, await store.result(job_id, 0), store.bytes)
        clock.advance(60)  # past twice the retention
        return kept, after_retention, await store.record(job_id)

    kept, (status, settled, result, held), gone = run(scenario())
    assert kept == b"result"
    assert (status, settled, result, held) == (JobStatus.SUCCEEDED, True, None, 0)  # the route answers 410
    assert gone is None
