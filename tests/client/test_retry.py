"""When the client tries again (client/tryon_client/retry.py): after a 503's Retry-After, a bounded
number of times, after failed connections (a service still starting), and never after a 503 saying this
deployment has no catalog jobs."""
from __future__ import annotations

import json
import time

import pytest

from tests.fixtures.service.harness import ServerProcess, free_port, stop_process
from tests.utils.client import CLOTH, PERSON
from tests.utils.jobs import PERSON as JOB_PERSON, garments
from tests.utils.local_http import LocalServer
from tryon_client import TryOnClient, TryOnError


def busy(seconds: str) -> tuple[int, dict, bytes]:
    return 503, {"Retry-After": seconds, "Content-Type": "application/json"}, json.dumps(
        {"error": {"code": "queue_full", "message": "the queue is full", "field": None}}).encode()


def test_503_is_retried_after_retry_after():
    with LocalServer({"/v1/tryon": [busy("1"), (200, {"Content-Type": "image/jpeg"}, b"\xff\xd8 an image")]}) as fake:
        started = time.monotonic()
        with TryOnClient(fake.base) as tryon:
            result = tryon.tryon(**PERSON, cloth=CLOTH)
        assert result.image == b"\xff\xd8 an image"
        assert time.monotonic() - started >= 1.0  # waited as the server asked
        assert [path for path, _ in fake.hits] == ["/v1/tryon", "/v1/tryon"]


def test_retries_are_bounded():
    with LocalServer({"/v1/tryon": busy("0"), "/v1/tryon/batch": busy("120")}) as fake:
        with TryOnClient(fake.base, retries=2, max_retry_wait=60) as tryon:
            with pytest.raises(TryOnError) as refused:
                tryon.tryon(**PERSON, cloth=CLOTH)
            assert (refused.value.status, refused.value.code, refused.value.retry_after) == (503, "queue_full", 0)
            assert len(fake.hits) == 3  # the first try and two retries
            # A server asking for longer than the client will wait: no retry, the wait it asked for is told.
            with pytest.raises(TryOnError) as later:
                list(tryon.tryon_batch(**PERSON, cloths=[CLOTH]))
            assert later.value.retry_after == 120 and len(fake.hits) == 4


def test_connection_errors_are_retried_then_raised():
    closed = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with TryOnClient(closed, retries=2) as tryon, pytest.raises(TryOnError) as unreachable:
        tryon.tryon(**PERSON, cloth=CLOTH)
    assert unreachable.value.status is None and unreachable.value.code == "unreachable"
    assert time.monotonic() - started >= 1.5  # backed off 0.5 s, then 1 s


def test_a_client_started_with_the_server_gets_its_answer(tmp_path, standin_weights_file, reference):
    """Connection refused while the model loads, then the answer: the retries cover a starting service."""
    process = ServerProcess({"TRYON_WEIGHTS": str(standin_weights_file), "TRYON_MAX_BATCH_SIZE": "1"}, tmp_path)
    try:
        with TryOnClient(process.url, retries=10) as tryon:  # 0.5 s doubling, then 30 s: up to 2.5 min
            assert tryon.tryon(**PERSON, cloth=CLOTH).image == reference
    finally:
        assert stop_process(process.process) == 0, process.stderr[-3000:]


def test_jobs_unavailable_on_this_deployment_is_not_retried():
    final = (503, {"Content-Type": "application/json"}, json.dumps(
        {"error": {"code": "jobs_unavailable", "message": "catalog jobs need TRYON_JOBS_URL", "field": None}}).encode())
    with LocalServer({"/v1/jobs": final}) as fake, TryOnClient(fake.base, retries=3) as client:
        with pytest.raises(TryOnError) as refused:
            client.submit_job(**JOB_PERSON, cloths=garments(1))
        assert (refused.value.status, refused.value.code, len(fake.hits)) == (503, "jobs_unavailable", 1)
