"""Jobs in a real redis-server (append-only, as deployed) shared by real replicas: a replica killed with
SIGKILL mid-job loses nothing; one killed after storing a job's results but before its webhook was
delivered leaves the delivery to another; Redis restarted mid-job loses no job, and while it is down
new jobs are refused with 503 while /v1/tryon keeps serving. One redis-server and three replicas for
the module, started together (two of them are there to be killed), with short claim and store times."""
from __future__ import annotations

import signal
import subprocess
import time

import httpx
import pytest
from standardwebhooks import Webhook

from tests.fixtures.service.harness import ServerProcess, free_port, redis_server_binary, sample_key, stop_process
from tests.utils.jobs import SECRET, WebhookReceiver, garments, submit, tryon_png, wait_job
from tests.utils.installed import skip_missing


class AppendOnlyRedis:
    """redis-server on 127.0.0.1 with appendonly yes and noeviction (the job store's deployment), restartable
    on the same port and files."""

    def __init__(self, binary: str, work_dir):
        self.binary, self.work_dir, self.port = binary, work_dir, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "yes",
             "--appendfsync", "always", "--maxmemory-policy", "noeviction", "--dir", str(self.work_dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + 20
        while subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True).stdout != b"PONG\n":
            assert time.monotonic() < end and self.process.poll() is None, "redis-server did not start"
            time.sleep(0.05)

    def stop(self, sig=signal.SIGTERM) -> None:
        stop_process(self.process, sig, 10)


@pytest.fixture(scope="module")
def redis(tmp_path_factory):
    binary = redis_server_binary()
    if binary is None:
        skip_missing("redis-server", "apt-get install redis-server; .ci/run does this")
    server = AppendOnlyRedis(binary, tmp_path_factory.mktemp("redis"))
    yield server
    server.stop(signal.SIGKILL)


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
           "TRYON_JOBS_CONCURRENCY": "1", "TRYON_JOBS_CLAIM_AFTER_S": "1", "TRYON_JOBS_TIMEOUT_MS": "300",
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
        while httpx.get(f"{survivor.url}/v1/jobs/{doc['id']}", timeout=10).json()["progress"]["done"] < 1:
            time.sleep(0.02)
        doomed.stop(signal.SIGKILL)
        done = wait_job(survivor.url, doc["id"])
        assert done["status"] == "succeeded" and done["progress"] == {"done": 12, "total": 12}
        for index, cloth in enumerate(cloths):
            result = httpx.get(f"{survivor.url}/v1/jobs/{doc['id']}/results/{index}", timeout=10)
            assert result.content == tryon_png(survivor.url, cloth), index
        deliveries = receiver.wait(1)
        time.sleep(0.5)
        assert len(receiver.deliveries) == 1
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
        deliveries = receiver.wait(2)
        time.sleep(0.5)  # nothing more after the success
        deliveries = list(receiver.deliveries)
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


def test_the_redis_store_sweeps_overdue_jobs_and_refuses_a_reused_idempotency_key(redis):
    """No replica involved: the store alone. A job whose deadline passed with its tasks never run is
    ended as expired by expire_overdue (and leaves the deadlines set); an Idempotency-Key used again
    with another request's fingerprint is refused, with the same one it returns the first job."""
    import asyncio

    from service.jobs.records import JobInputs, JobStatus, NewJob, new_job_id
    from service.jobs.redis_store import DEADLINES, RedisJobStore
    from service.jobs.store import IdempotencyKeyReused

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
    assert ended >= 0 and status is JobStatus.EXPIRED and left is None  # (the replicas of the module sweep too)
