"""Start-up (service/queue/host.py): on a CPU, where no CUDA graph is captured, a replica
warms and times its smallest batch only before it is ready, and admission's estimates for
the other sizes err long (admission.ServiceRate.from_smallest) until real batches run."""
from __future__ import annotations

import json

import httpx
import pytest

from service.queue.admission import CPU_GROWTH_PER_DOUBLING, ServiceRate
from tests.fixtures.service.harness import running_server


@pytest.fixture(scope="module")
def server(tmp_path_factory, standin_weights_file):
    with running_server({"TRYON_WEIGHTS": str(standin_weights_file), "TRYON_MAX_BATCH_SIZE": "4"},
                        tmp_path_factory.mktemp("logs")) as proc:
        yield proc


def test_a_cpu_replica_warms_its_smallest_batch_only(server):
    ready = next(json.loads(line) for line in server.stderr.splitlines()
                 if line.startswith("{") and json.loads(line).get("message") == "ready")
    assert list(ready["warmup_s"]) == ["1"]
    seconds = {int(k): v for k, v in httpx.get(f"{server.url}/readyz").json()["service_seconds_by_batch_size"].items()}
    assert sorted(seconds) == [1, 2, 3, 4]
    for n in (2, 3, 4):
        assert seconds[n] >= n * seconds[1], "an untimed size costs at least n single items"


def test_seeded_sizes_err_long_and_follow_real_batches():
    rate = ServiceRate.from_smallest(ServiceRate({1: 1.0}), (1, 2, 4, 8))
    assert rate.snapshot() == pytest.approx({1: 1.0, 2: 2 * CPU_GROWTH_PER_DOUBLING,
                                             4: 4 * CPU_GROWTH_PER_DOUBLING ** 2, 8: 8 * CPU_GROWTH_PER_DOUBLING ** 3})
    for _ in range(20):
        rate.record(8, 9.0)
    assert rate.seconds(8) == pytest.approx(9.0, rel=0.01)
