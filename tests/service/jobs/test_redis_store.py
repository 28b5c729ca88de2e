"""Jobs in a real redis-server (append-only, as deployed) shared by two real replicas: a replica
killed with SIGKILL mid-job loses nothing, Redis restarted mid-job loses no job, and a Redis
that is down refuses new jobs with 503 while /v1/tryon keeps serving."""
from __future__ import annotations

import signal
import subprocess
import time

import httpx
import pytest
from standardwebhooks import Webhook

from tests.fixtures.service.harness import (ServerProcess, free_port, redis_server_binary, running_server,
                                            stop_process)
from tests.utils.jobs import SECRET, WebhookReceiver, garments, submit, tryon_png, wait_job


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
        pytest.skip("redis-server is not installed")
    server = AppendOnlyRedis(binary, tmp_path_factory.mktemp("redis"))
    yield server
    server.stop(signal.SIGKILL)


@pytest.fixture(scope="module")
def env(redis, standin_weights_file):
    return {"TRYON_WEIGHTS": str(standin_weights_file), "TRYON_JOBS_URL": redis.url, "TRYON_JOBS_TASK_GARMENTS": "1",
            "TRYON_JOBS_CONCURRENCY": "1", "TRYON_JOBS_CLAIM_AFTER_S": "1.5", "TRYON_URL_ALLOW_HOSTS": "127.0.0.1",
            "TRYON_WEBHOOK_SECRET": SECRET, "TRYON_WEBHOOK_RETRY_S": "0.2,0.2", "TRYON_JOBS_MAX_GARMENTS": "16"}


def test_a_replica_killed_mid_job_loses_nothing(tmp_path, env):
    receiver = WebhookReceiver()
    doomed = ServerProcess(env, tmp_path)
    try:
        doomed.wait_ready()
        with running_server(env, tmp_path) as survivor:
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
        doomed.stop(signal.SIGKILL)
        receiver.close()


def test_redis_restarted_mid_job_loses_no_job(tmp_path, env, redis):
    with running_server(env, tmp_path) as server:
        doc = submit(server.url, garments(10)).json()
        redis.stop()  # SIGTERM: what the append-only file holds is on disk
        time.sleep(0.5)
        redis.start()
        done = wait_job(server.url, doc["id"])
        assert done["status"] == "succeeded" and done["progress"] == {"done": 10, "total": 10}


def test_a_redis_that_is_down_refuses_jobs_but_not_tryon(tmp_path, env, standin_weights_file):
    dead = {**env, "TRYON_JOBS_URL": f"redis://127.0.0.1:{free_port()}/0", "TRYON_JOBS_TIMEOUT_MS": "300"}
    with running_server(dead, tmp_path) as server:
        answer = submit(server.url, garments(1))
        assert answer.status_code == 503 and answer.headers["retry-after"]
        assert answer.json()["error"]["code"] == "jobs_unavailable"
        assert tryon_png(server.url, garments(1)[0])
