"""The engine and its queue in this process: loaded once, warmed, timed, then batching.

``EngineHost.start`` loads the model onto its device, warms what serving the first
requests correctly needs, gives admission control the timings it starts from, and starts
the one ``Batcher``. On a GPU that is every batch size (each captures its CUDA graph, which
its first batch must find), then the smallest and largest timed again (the warm-up's
timings include the captures). On a CPU, where nothing is captured, it is the sampler's
self-check and one forward of the smallest size, whose time seeds admission (it includes
that first forward's one-time costs, so it errs long); the other sizes are seeded longer
still and every size follows real batches (admission.ServiceRate.from_smallest). No second
timing forward: on a 2-core CPU each forward of 256x192 is seconds (docs/deploy.md, "A
replica's start-up"). The person detector warms after readiness, where photos are read
(service/api/state.py). The single process of ``TRYON_WORKERS=1`` holds one, as does the
engine process of ``TRYON_WORKERS > 1`` (service/processes/supervisor.py), whose front ends
learn of it through ``hello``.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from model.engine import Engine, EngineConfig, pick_device

from ..examples import EXAMPLES
from ..metrics import Metrics
from ..settings import Settings
from .admission import ServiceRate
from .batcher import Batcher
from .interface import InferenceEngine

log = logging.getLogger("service")

EngineFactory = Callable[[EngineConfig], InferenceEngine]


def weights_name(weights) -> str:
    """What the engine's weights are called wherever they are named (the "ready" line, the HTTP edge's
    headers): the checkpoint's file name, or "random"."""
    return "random" if weights.random else weights.name


class EngineHost:
    def __init__(self, settings: Settings, metrics: Metrics, engine_factory: EngineFactory | None = None,
                 on_device_failure: Callable[[str], None] | None = None):
        self.settings = settings
        self.metrics = metrics
        self.engine_factory = engine_factory or Engine  # a benchmark's or test's stand-in replaces the model here
        self.on_device_failure = on_device_failure
        self.engine: Engine | None = None
        self.batcher: Batcher | None = None
        self.startup_s: dict = {}  # what start() took, for the "ready" log line

    async def start(self) -> None:
        s = self.settings
        device_type = pick_device(s.device).type
        batch_sizes = s.batch_sizes_for(device_type)
        config = EngineConfig(device=s.device, precision=s.precision, batch_sizes=batch_sizes,
                              image_size_hw=s.image_hw, weights=s.weights, sampler=s.sampler,
                              check_inputs=str(EXAMPLES))
        started = time.perf_counter()
        self.engine = await asyncio.to_thread(self.engine_factory, config)
        built = time.perf_counter()
        if self.engine.weights.random:
            log.warning("SERVING RANDOM WEIGHTS: no checkpoint was found, every output is meaningless; "
                        "set TRYON_WEIGHTS or put a checkpoint in weights/ (X-Weights: random)")
        graphs = device_type == "cuda"
        warmup = await asyncio.to_thread(self.engine.warmup, None if graphs else batch_sizes[:1])
        warmed = time.perf_counter()
        self.metrics.sampler.labels(sampler=self.engine.sampler).set(1)
        # Admission control starts from the smallest and largest batch timed once warm (sizes
        # between are interpolated), on a CPU from the warm-up's one forward, and follows every
        # batch the engine runs from then on.
        if graphs:
            rate = await asyncio.to_thread(ServiceRate.measured, self.engine.infer, s.image_hw,
                                           {batch_sizes[0], batch_sizes[-1]})
        else:
            rate = ServiceRate.from_smallest(batch_sizes[0], warmup[batch_sizes[0]], batch_sizes)
        self.batcher = Batcher(self.engine, max_batch_size=s.max_batch_size, max_wait_s=s.max_batch_wait_ms / 1000,
                               queue_limit=s.queue_limit, metrics=self.metrics, rate=rate,
                               on_device_failure=self.on_device_failure)
        self.batcher.start()
        done = time.perf_counter()
        # build: the weights read and the network prepared; warm: the sampler's self-check and
        # the warm-up (warmup_s, per batch size); timing: what admission's seeds took beyond it.
        self.startup_s = {"build_s": round(built - started, 3), "warm_s": round(warmed - built, 3),
                          "warmup_s": {str(k): round(v, 3) for k, v in warmup.items()},
                          "timing_s": round(done - warmed, 3), "startup_s": round(done - started, 3)}

    @property
    def hello(self) -> dict:
        """What a front-end process learns of the engine when it connects (service/processes/remote.py)."""
        weights = self.engine.weights
        return {"info": self.engine.info, "device": str(self.engine.device),
                "weights": {"name": weights.name, "random": weights.random, "sha256": weights.sha256},
                "seconds_by_batch_size": {str(k): v for k, v in self.batcher.rate.snapshot().items()}}

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()
