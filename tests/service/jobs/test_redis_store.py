"""The Redis job store (service/jobs/redis_store.py) alone, against a real redis-server (append-only, as
deployed; tests/service/jobs/conftest.py) with no replica running. Replicas sharing it, killed and
restarted: tests/service/jobs/test_wiring.py."""
from __future__ import annotations

import asyncio
import time

from service.jobs.records import JobInputs, JobStatus, NewJob, new_job_id
from service.jobs.redis_store import DEADLINES, RedisJobStore
from service.jobs.store import IdempotencyKeyReused


def test_the_redis_store_sweeps_overdue_jobs_and_refuses_a_reused_idempotency_key(redis):
    """A job whose deadline passed with its tasks never run is
    ended as expired by expire_overdue (and leaves the deadlines set); an Idempotency-Key used again
    with another request's fingerprint is refused, with the same one it returns the first job."""
    async def scenario():
        store = RedisJobStore(redis.url, 2.0, 60, 4, 60)
        try:
            def job(deadline_at: float, fingerprint: str = "a") -> NewJob:
                return NewJob(new_job_id(), "owner", {}, JobInputs({}, None, [b"x"]), deadline_at,
                              idempotency_key="catalog-1", fingerprint=fingerprint)
            overdue, _ = await store.create(job(time.time() - 1, "a"))
            again, created = await store.create(job(time.time() - 1, "a"))
            try:
                await store.create(job(time.time() - 1, "b"))
                reused = None
            except IdempotencyKeyReused as exc:
                reused = str(exc)
            ended = await store.expire_overdue()
            record = await store.record(overdue)
            left = await store.client.zscore(DEADLINES, overdue)
            return overdue, again, created, reused, ended, record.status, left
        finally:
            await store.close()

    overdue, again, created, reused, ended, status, left = asyncio.run(scenario())
    assert again == overdue and created is False and reused == overdue
    assert ended == 1 and status is JobStatus.EXPIRED and left is None
