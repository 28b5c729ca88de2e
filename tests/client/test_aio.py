"""AsyncTryOnClient (client/tryon_client/aio.py) against a real server: the same answers as the
synchronous client's, for its calls and for its catalog jobs."""
from __future__ import annotations

import asyncio

import pytest

from tests.utils.client import API_KEY, CLOTH, JOBS_API_KEY, PERSON
from tests.utils.jobs import PERSON as JOB_PERSON, garments
from tryon_client import AsyncTryOnClient, TryOnError


def test_async_client_gives_the_same_answers(server, reference):
    async def calls():
        async with AsyncTryOnClient(server.url, api_key=API_KEY) as tryon:
            single = await tryon.tryon(**PERSON, cloth=CLOTH)
            batch = [r async for r in tryon.tryon_batch(**PERSON, cloths=[CLOTH, CLOTH])]
            prepared = await tryon.prepare(**PERSON)
            with pytest.raises(TryOnError) as refused:
                await tryon.tryon(**PERSON, cloth=b"text")
            return single, batch, prepared, refused.value

    single, batch, prepared, refused = asyncio.run(calls())
    assert single.image == reference
    assert [r.index for r in batch] == [0, 1] and all(r.ok for r in batch)
    assert prepared.size == (64, 64) and prepared.pose.startswith(b"\x89PNG")
    assert refused.status == 415


def test_the_async_client_gives_the_same_answers(jobs_server, jobs_reference):
    async def calls():
        async with AsyncTryOnClient(jobs_server.url, api_key=JOBS_API_KEY) as client:
            job = await client.submit_job(**JOB_PERSON, cloths=garments(2), format="png")
            done = await client.wait(job.id, timeout=60, interval=0.1)
            results = [r async for r in client.results(done)]
            other = await client.submit_job(**JOB_PERSON, cloths=garments(6))
            canceled = await client.cancel(other.id)
            return done, results, canceled

    done, results, canceled = asyncio.run(calls())
    assert done.status == "succeeded" and [r.image for r in results] == jobs_reference
    assert canceled.status == "canceled"
