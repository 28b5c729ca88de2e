"""A fused sampler that fails its warm-up check does not take the service down:
the reference serves, and /readyz, /metrics and the log say which sampler does and
that the fused one failed (a failed component, service/api/components.py). Forced for
real on the CPU: Triton asked for with no GPU and no interpreter cannot launch."""
from __future__ import annotations

import httpx

from tests.fixtures.service.harness import fixture_bytes, running_server, sample_key

IMAGES = {name: fixture_bytes(f"{name}_64x64.png") for name in ("masked_model", "pose", "cloth")}


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
        files = {name: (f"{name}.png", data, "image/png") for name, data in IMAGES.items()}
        answer = httpx.post(f"{server.url}/v1/tryon", files=files, timeout=60)
        assert answer.status_code == 200 and answer.headers["content-type"] == "image/jpeg"
    assert server.stderr.count("SAMPLER FALLBACK") == 1
    assert server.stderr.count("COMPONENT FAILED: sampler: triton sampler failed:") == 1
