"""Catalog jobs across replicas, end to end, as service/jobs/wiring.py builds them (``Jobs``: the Redis
store the settings name, this replica's runner and webhook sender): the claims and take-overs of the jobs runner
(service/jobs/runner.py) and the webhook sender (service/jobs/webhooks.py), through a real redis-server
(service/jobs/redis_store.py; append-only, as deployed) shared by real replicas: a replica killed with
SIGKILL mid-job loses nothing; one killed after storing a job's results but before its webhook was
delivered leaves the delivery to another; Redis restarted mid-job loses no job, and while it is down
new jobs are refused with 503 while /v1/tryon keeps serving. One redis-server and three replicas for
the module, started together (two of them are there to be killed), with short claim and store times.
The store alone, without replicas: tests/service/jobs/test_redis_store.py."""
from __future__ import annotations

import signal
import time

import httpx
import pytest
from standardwebhooks import Webhook

from tests.fixtures.service.harness import ServerProcess, sample_key
from tests.utils.jobs import SECRET, WebhookReceiver, garments, submit, tryon_png, wait_job

CLAIM_AFTER_S = 1.0  # TRYON_JOBS_CLAIM_AFTER_S of the replicas: a task or delivery left idle this long is taken over
# How long a test waits to show that no second delivery comes: past CLAIM_AFTER_S, after which another replica
# would take up a delivery it thought left unfinished, and past the retry delay (TRYON_WEBHOOK_RETRY_S, 0.2 s).
QUIET_S = CLAIM_AFTER_S + 0.5


class Replicas:
    """``survivor`` serves the whole module; ``doomed`` and ``delivering`` are there to be killed."""

    def __init__(self, env: dict[str, str], log_dir):
        self.survivor, self.doomed, self.delivering = (ServerProcess(env, log_dir) for _ in range(3))
        self.all = (self.survivor, self.doomed, self.delivering)
        for replica in self.all:  # started together: their start-ups overlap
            replica.wait_ready()

    def alive(self, *but: ServerProcess) -> list[ServerProcess]:
        return [r for r in self.all if r not in but and r.process.poll() is None]


@pytest.fixture(scope="module")
def replicas(redis, standin_weights_file, tmp_path_factory):
    env = {"TRYON_WEIGHTS": str(standin_weights_file), "TRYON_JOBS_URL": redis.url, "TRYON_JOBS_TASK_GARMENTS": "1",
           "TRYON_JOBS_CONCURRENCY": "1", "TRYON_JOBS_CLAIM_AFTER_S": str(CLAIM_AFTER_S),
           "TRYON_JOBS_TIMEOUT_MS": "300",
           "TRYON_URL_ALLOW_HOSTS": "127.0.0.1", "TRYON_WEBHOOK_SECRET": SECRET, "TRYON_WEBHOOK_RETRY_S": "0.2,0.2",
           "TRYON_JOBS_MAX_GARMENTS": "16"}
    found = Replicas(env, tmp_path_factory.mktemp("replicas"))
    yield found
    for replica in found.all:
        replica.process.send_signal(signal.SIGCONT)
    for replica in found.alive(found.survivor):
        replica.stop(signal.SIGKILL)
    assert found.survivor.stop() == 0, found.survivor.stderr[-3000:]  # drains and exits cleanly


def test_a_replica_killed_mid_job_loses_nothing(replicas):
    survivor, doomed = replicas.survivor, replicas.doomed
    receiver = WebhookReceiver()
    try:
        cloths = garments(12)
        doc = submit(doomed.url, cloths, {"format": "png", "webhook_url": receiver.url}).json()
        end = time.monotonic() + 60
        while httpx.get(f"{survivor.url}/v1/jobs/{doc['id']}", timeout=10).json()["progress"]["done"] < 1:
            assert time.monotonic() < end, "no garment done in 60 s"
            time.sleep(0.02)
        doomed.stop(signal.SIGKILL)
        done = wait_job(survivor.url, doc["id"])
        assert done["status"] == "succeeded" and done["progress"] == {"done": 12, "total": 12}
        for index, cloth in enumerate(cloths):
            result = httpx.get(f"{survivor.url}/v1/jobs/{doc['id']}/results/{index}", timeout=10)
            assert result.content == tryon_png(survivor.url, cloth), index
        deliveries = receiver.wait_quiet(1, QUIET_S)
        assert len(deliveries) == 1
        Webhook(SECRET).verify(deliveries[0][1], deliveries[0][0])
    finally:
        receiver.close()


def test_a_replica_killed_before_delivering_a_stored_jobs_webhook_leaves_it_to_another(replicas):
    """The other replicas paused (SIGSTOP), ``delivering`` alone runs the job, stores its result, ends it and
    starts the delivery, which the receiver holds unanswered; then SIGKILL, the others resume, and one of
    them claims the delivery left idle TRYON_JOBS_CLAIM_AFTER_S and delivers it: same webhook-id, signed."""
    delivering, others = replicas.delivering, replicas.alive(replicas.delivering)
    receiver = WebhookReceiver(hold_first=True)
    try:
        for other in others:
            other.process.send_signal(signal.SIGSTOP)
        try:
            doc = submit(delivering.url, garments(1), {"webhook_url": receiver.url}).json()
            assert len(receiver.wait(1)) == 1  # the attempt under way, held
            stored = httpx.get(f"{delivering.url}/v1/jobs/{doc['id']}", timeout=10).json()
            assert stored["status"] == "succeeded"  # results stored and the job ended before the delivery
            delivering.stop(signal.SIGKILL)
        finally:
            for other in others:
                other.process.send_signal(signal.SIGCONT)
        deliveries = receiver.wait_quiet(2, QUIET_S)  # nothing more after the success
    finally:
        receiver.close()
    assert [status for _, _, status in deliveries] == [None, 204]
    verifier = Webhook(SECRET)
    for headers, body, _ in deliveries:
        verifier.verify(body, headers)
        assert headers["webhook-id"] == f"msg_{doc['id']}"
    result = httpx.get(f"{others[0].url}/v1/jobs/{doc['id']}/results/0", timeout=10)
    assert result.status_code == 200


def test_redis_restarted_mid_job_loses_no_job_and_down_refuses_jobs_but_not_tryon(replicas, redis):
    server = replicas.survivor
    doc = submit(server.url, garments(10)).json()
    redis.stop()  # SIGTERM: what the append-only file holds is on disk
    try:
        answer = submit(server.url, garments(1))
        assert answer.status_code == 503 and answer.headers["retry-after"]
        assert answer.json()["error"]["code"] == "jobs_unavailable"
        assert tryon_png(server.url, garments(1)[0])
        assert jobs_store_available(server) == 0  # read at the scrape
        store = httpx.get(f"{server.url}/readyz", timeout=10).json()["components"]["jobs_store"]
        assert store["status"] == "failed" and store["reason"].startswith("the job store (Redis) did not answer")
    finally:
        redis.start()
    done = wait_job(server.url, doc["id"])
    assert done["status"] == "succeeded" and done["progress"] == {"done": 10, "total": 10}
    assert httpx.get(f"{server.url}/readyz", timeout=10).json()["components"]["jobs_store"]["status"] == "ready"
    assert jobs_store_available(server) == 1


def jobs_store_available(server) -> float:
    return server.metrics()[sample_key("tryon_component_available", {"component": "jobs_store"})]
