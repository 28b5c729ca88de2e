"""A part that fails to load, broken on purpose in a real server process: the service answers
what it can, and names what it cannot in /readyz, one log line, the metrics and a 503 with
the part's own code, never a 500 (service/api/components.py). A fused sampler that fails its
warm-up check does not take the service down: the reference serves, and /readyz, /metrics and the
log say which sampler does and that the fused one failed (forced for real on the CPU: Triton asked
for with no GPU and no interpreter cannot launch). The cache's Redis and the job store's Redis are
broken in their own tests (test_cache.py, tests/service/jobs/test_wiring.py)."""
from __future__ import annotations

import time

import httpx

from tests.fixtures.service.harness import TRYON_IMAGES, ServerProcess, fixture_bytes, running_server, sample_key
from tests.fixtures.service.probe import wait_until_ok
from tests.utils import FIXTURES

PHOTO = (FIXTURES / "photos" / "grace_hopper.jpg").read_bytes()
PHOTO_FILES = {"person": ("person.jpg", PHOTO, "image/jpeg"),
               "cloth": ("cloth.png", TRYON_IMAGES["cloth"], "image/png")}
MASKED_MODEL_FILES = {name: (f"{name}.png", data, "image/png") for name, data in TRYON_IMAGES.items()}
IMAGES_64 = {name: fixture_bytes(f"{name}_64x64.png") for name in ("masked_model", "pose", "cloth")}


def components_once_loaded(url: str, timeout: float = 60) -> dict:
    """/readyz's components once the person detector (loaded after readiness) has loaded or failed."""
    end = time.monotonic() + timeout
    while True:
        components = httpx.get(f"{url}/readyz", timeout=10).json()["components"]
        if components["person_detector"]["status"] != "loading" or time.monotonic() > end:
            return components
        time.sleep(0.1)


def available(server, component: str) -> float:
    return server.metrics()[sample_key("tryon_component_available", {"component": component})]


def test_a_person_detector_that_fails_to_load_refuses_photos_and_serves_the_rest(tmp_path, standin_weights_file):
    # A real failure of mediapipe's import: the matplotlib it imports refuses a backend that does not exist.
    env = {"TRYON_WEIGHTS": str(standin_weights_file), "TRYON_MAX_BATCH_SIZE": "1", "MPLBACKEND": "no_such_backend"}
    with running_server(env, tmp_path) as server:
        components = components_once_loaded(server.url)
        assert components["person_detector"]["status"] == "failed"
        assert "no_such_backend" in components["person_detector"]["reason"]
        assert components["weights"] == components["sampler"] == {"status": "ready", "reason": None}
        ready = httpx.get(f"{server.url}/readyz", timeout=10)
        assert ready.status_code == 200 and ready.json()["ready"]  # everything but photos is served
        assert available(server, "person_detector") == 0 and available(server, "weights") == 1

        for route in ("/v1/tryon", "/v1/prepare"):
            answer = httpx.post(f"{server.url}{route}", files=PHOTO_FILES if route == "/v1/tryon"
                                else {"person": PHOTO_FILES["person"]}, timeout=60)
            assert answer.status_code == 503, (route, answer.text)
            error = answer.json()["error"]
            assert (error["code"], error["field"]) == ("person_detector_unavailable", "person")
            assert "no_such_backend" in error["message"] and "retry-after" not in answer.headers
        served = httpx.post(f"{server.url}/v1/tryon", files=MASKED_MODEL_FILES, timeout=60)
        assert served.status_code == 200 and served.headers["content-type"] == "image/jpeg"
        failures = server.metrics()
        assert failures[sample_key("tryon_request_failure_total",
                                   {"route": "/v1/tryon", "reason": "person_detector_unavailable"})] == 1
    failed_lines = [line for line in server.stderr.splitlines() if "COMPONENT FAILED" in line]
    assert len(failed_lines) == 1 and '"component": "person_detector"' in failed_lines[0]
    assert '"status": 500' not in server.stderr


def test_weights_that_fail_to_load_leave_a_replica_alive_unready_and_saying_why(tmp_path):
    broken = tmp_path / "daflow.safetensors"
    broken.write_bytes(b"\x00" * 64)  # truncated: no safetensors header
    server = ServerProcess({"TRYON_WEIGHTS": str(broken), "TRYON_MAX_BATCH_SIZE": "1"}, tmp_path)
    try:
        wait_until_ok(f"{server.url}/healthz", server.process)  # alive: not restarted into the same failure
        ready = httpx.get(f"{server.url}/readyz", timeout=10)
        assert ready.status_code == 503
        info = ready.json()
        assert info["status"] == "weights_failed" and not info["ready"]
        assert info["components"]["weights"]["status"] == "failed"
        assert str(broken) in info["components"]["weights"]["reason"]
        assert httpx.get(f"{server.url}/v2/health/ready", timeout=10).status_code == 503

        for answer in (httpx.post(f"{server.url}/v1/tryon", files=MASKED_MODEL_FILES, timeout=60),
                       httpx.post(f"{server.url}/v1/jobs", files=MASKED_MODEL_FILES, timeout=60)):
            assert answer.status_code == 503, answer.text
            assert answer.json()["error"]["code"] == "weights_unavailable"
            assert str(broken) in answer.json()["error"]["message"] and "retry-after" not in answer.headers
        # What needs no network is served: the person's images, keypoints detected in the photo.
        prepared = httpx.post(f"{server.url}/v1/prepare", params={"output": "keypoints"},
                              files={"person": PHOTO_FILES["person"]}, timeout=60)
        assert prepared.status_code == 200 and prepared.json()["people"]
        assert available(server, "weights") == 0
        assert server.metrics()[sample_key("tryon_ready")] == 0
    finally:
        assert server.stop() == 0, server.stderr[-3000:]
    assert server.stderr.count("COMPONENT FAILED: weights") == 1


def test_failed_sampler_check_serves_with_the_reference(tmp_path, standin_weights_file):
    env = {"TRYON_WEIGHTS": str(standin_weights_file), "TRYON_SAMPLER": "triton", "TRITON_INTERPRET": "0",
           "TRYON_MAX_BATCH_SIZE": "1"}  # one batch size to warm: a quick start on a busy machine
    with running_server(env, tmp_path) as server:
        ready = httpx.get(f"{server.url}/readyz", timeout=10)
        assert ready.status_code == 200
        info = ready.json()
        assert info["sampler"] == "torch" and info["requested_sampler"] == "triton"
        assert info["sampler_fallback"].startswith("triton sampler failed:")
        assert info["components"]["sampler"] == {"status": "failed", "reason": info["sampler_fallback"]}
        metrics = server.metrics()
        assert metrics[sample_key("tryon_sampler", {"sampler": "torch"})] == 1
        assert sample_key("tryon_sampler", {"sampler": "triton"}) not in metrics
        assert metrics[sample_key("tryon_component_available", {"component": "sampler"})] == 0
        files = {name: (f"{name}.png", data, "image/png") for name, data in IMAGES_64.items()}
        answer = httpx.post(f"{server.url}/v1/tryon", files=files, timeout=60)
        assert answer.status_code == 200 and answer.headers["content-type"] == "image/jpeg"
    assert server.stderr.count("SAMPLER FALLBACK") == 1
    assert server.stderr.count("COMPONENT FAILED: sampler: triton sampler failed:") == 1
