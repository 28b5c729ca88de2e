"""Start-up on a fresh machine (random weights flagged, a working curl line)
and shutdown: SIGTERM turns readiness off and drains every accepted request."""
from __future__ import annotations

import asyncio
import concurrent.futures
import shlex
import shutil
import subprocess
import time

import httpx
import pytest

from model.weights import find_weights
from service.api.app import create_app
from service.settings import Settings
from service.processes.exits import DEVICE_FAILURE_EXIT
from tests.fixtures.service.harness import ServerProcess, fixture_bytes, running_server, sample_key

FILES = {name: (f"{name}.png", fixture_bytes(f"{name}_64x64.png"), "image/png")
         for name in ("masked_model", "pose", "cloth")}
IN_FLIGHT = 6


DRAIN_TIMEOUT_S = 60  # outlasts a batch of six on a loaded machine (20 s seen)


@pytest.fixture
def server(tmp_path_factory):
    """A server for one test: the SIGTERM test stops it itself (its exit status is checked there), so no
    other test may share it. The batch window lets all six of that test queue through a loaded machine."""
    with running_server({"TRYON_MAX_BATCH_SIZE": "8", "TRYON_MAX_BATCH_WAIT_MS": "5000",
                         "TRYON_DRAIN_TIMEOUT_S": str(DRAIN_TIMEOUT_S), "TRYON_REQUEST_TIMEOUT_S": "120"},
                        tmp_path_factory.mktemp("logs"), clean_exit=False) as proc:
        yield proc


def test_fresh_start_flags_random_weights_and_prints_a_working_curl(server, tmp_path):
    info = httpx.get(f"{server.url}/readyz").json()
    if find_weights() is None:  # a checkout without a checkpoint, as on a fresh machine
        assert info["weights"] == "random" and info["random_weights"] is True
        assert "SERVING RANDOM WEIGHTS" in server.stderr
    curl = next(line for line in server.stdout.splitlines() if line.startswith("curl "))
    assert f"http://127.0.0.1:{server.port}/v1/tryon" in curl
    if shutil.which("curl"):
        done = subprocess.run(shlex.split(curl), cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert "200 OK" in done.stdout and f"x-weights: {info['weights']}" in done.stdout.lower()
        assert (tmp_path / "tryon.jpg").read_bytes()[:3] == b"\xff\xd8\xff"


def test_draining_turns_readiness_503():
    app = create_app(Settings(image_size="64x64"))
    service = app.state.service
    service.ready = True

    async def readiness():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
            before = await client.get("/readyz")
            service.begin_drain()
            after = await client.get("/readyz")
            return before, after

    before, after = asyncio.run(readiness())
    assert before.status_code == 200 and after.status_code == 503
    assert after.json()["status"] == "draining" and after.json()["draining"] is True


def test_sigterm_drains_accepted_requests(server):
    with httpx.Client(base_url=server.url, timeout=180) as client, \
            concurrent.futures.ThreadPoolExecutor(IN_FLIGHT) as pool:
        pending = [pool.submit(client.post, "/v1/tryon", files=FILES) for _ in range(IN_FLIGHT)]
        end = time.monotonic() + 60
        while server.metrics()[sample_key("tryon_queue_depth")] < IN_FLIGHT:  # all accepted, none run yet
            assert time.monotonic() < end
            time.sleep(0.02)
        server.process.terminate()
        started = time.monotonic()
        answers = [p.result() for p in pending]
    assert [a.status_code for a in answers] == [200] * IN_FLIGHT
    assert all(a.content[:3] == b"\xff\xd8\xff" for a in answers)
    assert server.process.wait(DRAIN_TIMEOUT_S + 5) == 0 and time.monotonic() - started < DRAIN_TIMEOUT_S
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/healthz")
    log = server.stderr
    assert log.index("draining: readiness is now 503") < log.index("Application shutdown complete")


def test_settings_from_environment(monkeypatch):
    monkeypatch.setenv("TRYON_API_KEYS", " k1, k2 ,")
    monkeypatch.setenv("TRYON_URL_ALLOW_HOSTS", "images.example.com,127.0.0.1:8080")
    monkeypatch.setenv("TRYON_IMAGE_SIZE", "128 x 96")
    monkeypatch.setenv("TRYON_MAX_BATCH_SIZE", "6")
    monkeypatch.setenv("TRYON_PORT", "9000")
    settings = Settings(port=8123)  # what a --port flag does: it wins over the environment
    assert settings.port == 8123 and settings.api_keys == ["k1", "k2"]
    assert settings.url_allow_hosts == ["images.example.com", "127.0.0.1:8080"]
    assert settings.image_hw == (128, 96) and settings.cors_origins == []
    assert settings.batch_sizes_for("cuda") == (1, 2, 4, 6)
    assert settings.batch_sizes_for("cpu") == (1, 2, 3, 4, 5, 6)
    monkeypatch.setenv("TRYON_IMAGE_SIZE", "big")
    with pytest.raises(ValueError):
        Settings()


def test_cudnn_allocation_failure_is_out_of_memory_not_500(tmp_path):
    """cuDNN reports running out of memory as a plain RuntimeError: still a 503 the client may
    retry, and the process stays healthy."""
    with running_server({"BROKEN_DEVICE_ERROR": "cudnn_alloc", "TRYON_MAX_BATCH_SIZE": "1"}, tmp_path,  # one request
                        module="tests.fixtures.service.broken_device") as server:
        answer = httpx.post(f"{server.url}/v1/tryon", files=FILES, timeout=30)
        assert answer.status_code == 503 and answer.json()["error"]["code"] == "out_of_memory", answer.text
        assert answer.headers["retry-after"]
        assert httpx.get(f"{server.url}/healthz").status_code == 200
        assert httpx.get(f"{server.url}/readyz").status_code == 200


def test_a_kernel_error_first_seen_at_capture_still_makes_the_service_ready(tmp_path):
    """Triton's errors derive from Exception, not RuntimeError: one at a graph's capture takes the
    sampler fallback, and the service becomes ready on the reference and serves (docs/gpu.md)."""
    with running_server({"TRYON_MAX_BATCH_SIZE": "1", "TRYON_SAMPLER": "numba"}, tmp_path,
                        module="tests.fixtures.service.kernel_error_at_capture") as server:
        info = httpx.get(f"{server.url}/readyz").json()
        assert info["ready"] and info["sampler"] == "torch" and info["requested_sampler"] == "numba" and info["cuda_graphs"] is True
        assert "OutOfResources" in info["sampler_fallback"]
        answer = httpx.post(f"{server.url}/v1/tryon", files=FILES, timeout=60)
        assert answer.status_code == 200 and answer.headers["content-type"] == "image/jpeg"
        assert server.stderr.count("SAMPLER FALLBACK") == 1


def test_a_broken_device_turns_probes_503_and_the_process_exits(tmp_path):
    """An illegal address poisons the CUDA context: every request held is answered 503
    device_failed, liveness and readiness say so with the reason, then the process exits
    non-zero so the orchestrator replaces it."""
    proc = ServerProcess({"BROKEN_DEVICE_ERROR": "illegal_address", "TRYON_MAX_BATCH_SIZE": "2",
                          "TRYON_MAX_BATCH_WAIT_MS": "300"}, tmp_path, module="tests.fixtures.service.broken_device")
    try:
        proc.wait_ready()
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: httpx.post(f"{proc.url}/v1/tryon", files=FILES, timeout=30), range(4)))
        assert {(a.status_code, a.json()["error"]["code"]) for a in answers} == {(503, "device_failed")}
        assert all(a.headers["retry-after"] for a in answers)
        health = httpx.get(f"{proc.url}/healthz")
        assert health.status_code == 503 and "illegal memory access" in health.json()["reason"]
        ready = httpx.get(f"{proc.url}/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "device_failed"
        assert proc.process.wait(30) == DEVICE_FAILURE_EXIT
        assert "DEVICE FAILED" in proc.stderr
    finally:
        proc.stop()
