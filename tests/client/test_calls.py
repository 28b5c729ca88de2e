"""A job's polling schedule (client/tryon_client/calls.py ``Polling``), shared by both clients, against a
fake server: wait backs off, never polls sooner than Retry-After, and gives up at its timeout."""
from __future__ import annotations

import asyncio
import json
import time

import pytest

from tests.utils.local_http import LocalServer
from tryon_client import AsyncTryOnClient, TryOnClient, TryOnError


def job_document(status: str) -> bytes:
    return json.dumps({"id": "job_x", "status": status, "progress": {"done": 0, "total": 1},
                       "garments": [{"index": 0, "status": "queued"}]}).encode()


def test_wait_backs_off_and_never_polls_sooner_than_retry_after():
    running = (200, {"Content-Type": "application/json"}, job_document("running"))
    asked = (200, {"Content-Type": "application/json", "Retry-After": "1"}, job_document("running"))
    done = (200, {"Content-Type": "application/json"}, job_document("succeeded"))
    with LocalServer({"/v1/jobs/job_x": [asked, running, running, done]}) as fake:
        started = time.monotonic()
        with TryOnClient(fake.base) as client:
            assert client.wait("job_x", interval=0.1).status == "succeeded"
        elapsed = time.monotonic() - started
        assert len(fake.hits) == 4 and 1.0 + 0.15 + 0.225 <= elapsed < 5  # 1 s asked, then 0.15, 0.225
    with LocalServer({"/v1/jobs/job_x": running}) as fake, TryOnClient(fake.base) as client:
        async def wait_async():
            async with AsyncTryOnClient(fake.base) as aclient:
                await aclient.wait("job_x", timeout=0.3, interval=0.1)

        with pytest.raises(TryOnError) as late:
            asyncio.run(wait_async())
        assert late.value.code == "wait_timeout" and "running" in late.value.message
        with pytest.raises(TryOnError):
            client.wait("job_x", timeout=0.2, interval=0.1)
