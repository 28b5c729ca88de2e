"""The client's catalog jobs (submit_job, job, wait, results, cancel; sync and async) against a real server,
a webhook verified as client/README.md shows, and wait's schedule and the final 503 against a fake one."""
from __future__ import annotations

import asyncio
import json
import time

import pytest
from standardwebhooks import Webhook

from tests.fixtures.service.harness import running_server
from tests.utils.jobs import PERSON, SECRET, WebhookReceiver, garments
from tests.utils.local_http import LocalServer
from tryon_client import AsyncTryOnClient, Job, TryOnClient, TryOnError

API_KEY = "jobs-client-key"


@pytest.fixture(scope="module")
def server(tmp_path_factory, standin_weights_file):
    env = {"TRYON_WEIGHTS": str(standin_weights_file), "TRYON_API_KEYS": API_KEY, "TRYON_MAX_BATCH_SIZE": "1",
           "TRYON_URL_ALLOW_HOSTS": "127.0.0.1", "TRYON_WEBHOOK_SECRET": SECRET, "TRYON_JOBS_TASK_GARMENTS": "2",
           "TRYON_JOBS_MAX_GARMENTS": "6"}
    with running_server(env, tmp_path_factory.mktemp("logs")) as proc:
        yield proc


@pytest.fixture(scope="module")
def reference(server) -> list[bytes]:
    """What /v1/tryon answers for each of garments(2), as PNG (the server has no key for a raw request:
    the client's own tryon, already tested against a raw one in test_client.py)."""
    with TryOnClient(server.url, api_key=API_KEY) as client:
        return [client.tryon(**PERSON, cloth=c, format="png").image for c in garments(2)]


def test_a_job_submitted_waited_for_and_its_results_read(server, reference):
    receiver = WebhookReceiver()
    try:
        with TryOnClient(server.url, api_key=API_KEY) as client:
            job = client.submit_job(**PERSON, cloths=[*garments(2), b"not an image"], format="png",
                                    webhook_url=receiver.url)
            assert job.status in ("queued", "running") and job.total == 3 and not job.ended
            assert job.retry_after == 2  # the server's poll hint, which wait honours
            done = client.wait(job, timeout=60, interval=0.1)
            results = list(client.results(done))
            assert client.job(job.id).status == "succeeded"
        event = Webhook(SECRET).verify(receiver.wait(1)[0][1], receiver.wait(1)[0][0])  # as client/README.md
    finally:
        receiver.close()
    assert done.status == "succeeded" and (done.done, done.total) == (3, 3) and done.finished_at
    assert [r.index for r in results] == [0, 1, 2] and [r.ok for r in results] == [True, True, False]
    assert [r.image for r in results[:2]] == reference and results[0].media_type == "image/png"
    assert (results[2].error.status, results[2].error.code, results[2].error.field) == (415, "not_an_image", "cloth")
    assert Job.from_document(event["data"]).status == "succeeded" and event["type"] == "job.succeeded"


def test_idempotency_key_cancel_and_unknown_jobs(server):
    with TryOnClient(server.url, api_key=API_KEY) as client:
        first = client.submit_job(**PERSON, cloths=garments(6), idempotency_key="catalog-7")
        again = client.submit_job(**PERSON, cloths=garments(6), idempotency_key="catalog-7")
        assert again.id == first.id and again.replayed and not first.replayed
        canceled = client.cancel(first)
        assert canceled.status == "canceled" and client.wait(first.id).status == "canceled"
        results = list(client.results(first.id))
        assert all(r.ok or r.error.code == "garment_canceled" for r in results)
        with pytest.raises(TryOnError) as unknown:
            client.job("job_" + "x" * 32)
        assert (unknown.value.status, unknown.value.code) == (404, "job_not_found")
        with pytest.raises(TryOnError) as malformed:  # not an id the service makes: refused before any look-up
            client.job("job_nothing")
        assert (malformed.value.status, malformed.value.code, malformed.value.field) == (422, "invalid_request", "job_id")


def test_the_async_client_gives_the_same_answers(server, reference):
    async def calls():
        async with AsyncTryOnClient(server.url, api_key=API_KEY) as client:
            job = await client.submit_job(**PERSON, cloths=garments(2), format="png")
            done = await client.wait(job.id, timeout=60, interval=0.1)
            results = [r async for r in client.results(done)]
            other = await client.submit_job(**PERSON, cloths=garments(6))
            canceled = await client.cancel(other.id)
            return done, results, canceled

    done, results, canceled = asyncio.run(calls())
    assert done.status == "succeeded" and [r.image for r in results] == reference
    assert canceled.status == "canceled"


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


def test_jobs_unavailable_on_this_deployment_is_not_retried():
    final = (503, {"Content-Type": "application/json"}, json.dumps(
        {"error": {"code": "jobs_unavailable", "message": "catalog jobs need TRYON_JOBS_URL", "field": None}}).encode())
    with LocalServer({"/v1/jobs": final}) as fake, TryOnClient(fake.base, retries=3) as client:
        with pytest.raises(TryOnError) as refused:
            client.submit_job(**PERSON, cloths=garments(1))
        assert (refused.value.status, refused.value.code, len(fake.hits)) == (503, "jobs_unavailable", 1)
