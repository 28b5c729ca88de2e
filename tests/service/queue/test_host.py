"""Start-up (service/queue/host.py): on a CPU, where no CUDA graph is captured, a replica
warms its smallest batch only before it is ready, in one forward whose time seeds admission
(no second forward to time it), and admission's estimates for the other sizes err long
(admission.ServiceRate.from_smallest) until real batches run."""
from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import torch

from service.metrics import Metrics
from service.queue.admission import CPU_GROWTH_PER_DOUBLING, ServiceRate
from service.queue.host import EngineHost
from service.settings import Settings
from tests.fixtures.service.harness import running_server
from tests.fixtures.standin_engine import StandInEngine


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
    rate = ServiceRate.from_smallest(1, 1.0, (1, 2, 4, 8))
    assert rate.snapshot() == pytest.approx({1: 1.0, 2: 2 * CPU_GROWTH_PER_DOUBLING,
                                             4: 4 * CPU_GROWTH_PER_DOUBLING ** 2, 8: 8 * CPU_GROWTH_PER_DOUBLING ** 3})
    for _ in range(20):
        rate.record(8, 9.0)
    assert rate.seconds(8) == pytest.approx(9.0, rel=0.01)


class CountedWarmup(StandInEngine):
    """Counts forwards; its warm-up runs one at each size asked for and says it took 2 s."""
    WARMUP_S = 2.0

    def __init__(self, config):
        super().__init__(config, seconds_per_item=1e-6)  # recorded in ``calls``

    def warmup(self, batch_sizes=None):
        sizes = self.batch_sizes if batch_sizes is None else batch_sizes
        for n in sizes:
            zeros = torch.zeros(n, 3, 64, 64, dtype=torch.uint8)
            self.infer(zeros, zeros, zeros)
        return {n: self.WARMUP_S for n in sizes}


def test_a_cpu_replica_runs_one_forward_before_ready_and_admission_starts_from_it():
    settings = Settings(device="cpu", image_size="64x64", max_batch_size=4)
    host = EngineHost(settings, Metrics(settings.max_batch_size), CountedWarmup)

    async def start():
        await host.start()
        await host.stop()
    asyncio.run(start())
    assert host.engine.calls == [[0]], "the warm-up's one batch of 1, no timing forward after it"
    assert host.batcher.rate.seconds(1) == CountedWarmup.WARMUP_S
    assert host.batcher.rate.seconds(4) > 4 * CountedWarmup.WARMUP_S
    assert host.startup_s["warmup_s"] == {"1": CountedWarmup.WARMUP_S}
    assert set(host.startup_s) == {"build_s", "warm_s", "warmup_s", "timing_s", "startup_s"}
