"""What the app holds while it runs: settings, metrics, the warm engine, the
batcher and the URL fetcher, and whether it is ready or draining."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from pathlib import Path
from typing import Callable

from fastapi import Request

from model.engine import Engine, EngineConfig, pick_device
from model.person import warm as warm_detector

from .admission import ServiceRate
from .arena import Arena
from .batcher import Batcher
from .cache import ResponseCache, model_identity, open_cache
from .fetch import UrlFetcher
from .metrics import Metrics, ReportedElsewhere
from .remote import EngineLink, RemoteBatcher, RemoteEngine
from .settings import Settings

log = logging.getLogger("service")
EXAMPLES = Path(__file__).resolve().parent / "examples"
# After a device failure, time for the failed requests' answers to leave, and for probes to
# see the 503, before the drain starts.
DEVICE_FAILURE_EXIT_DELAY_S = 1.0
# The exit status of a process that shut down because its device failed (an orchestrator restarts it).
DEVICE_FAILURE_EXIT = 4


EngineFactory = Callable[[EngineConfig], Engine]


class ServiceState:
    def __init__(self, settings: Settings, engine_factory: EngineFactory | None = None,
                 engine_link: EngineLink | None = None):
        self.settings = settings
        self.engine_factory = engine_factory or Engine  # a benchmark's stand-in replaces the model here
        # A front-end process of TRYON_WORKERS > 1: the engine and its queue live behind this link.
        self.engine_link = engine_link
        self.metrics = Metrics(settings.max_batch_size)
        self.engine: Engine | RemoteEngine | None = None
        self.batcher: Batcher | RemoteBatcher | None = None
        self.fetcher: UrlFetcher | None = None
        self.cache: ResponseCache | None = None
        self.ready = False
        self.draining = False
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def weights_label(self) -> str | None:
        """The X-Weights header: the checkpoint's file name, or "random"."""
        if self.engine is None:
            return None
        return "random" if self.engine.weights.random else self.engine.weights.name

    @property
    def info(self) -> dict:
        s = self.settings
        status = ("device_failed" if not self.healthy else "draining" if self.draining
                  else "ready" if self.ready else "starting")
        info = {"status": status, "ready": status == "ready", "draining": self.draining,
                "max_batch_size": s.max_batch_size, "max_batch_wait_ms": s.max_batch_wait_ms,
                "queue_limit": s.queue_limit, "queue_depth": self.batcher.depth if self.batcher else 0,
                "request_timeout_s": s.request_timeout_s, "sampler": s.sampler,
                "cache": self.cache.store.name if self.cache else None}
        if not self.healthy:
            info["device_failure"] = self.batcher.device_failure
        if self.batcher is not None and self.batcher.rate is not None:
            info["service_seconds_by_batch_size"] = {str(k): round(v, 4) for k, v in self.batcher.rate.snapshot().items()}
        if self.engine is not None:
            info |= self.engine.info
            info["sampler_in_use"] = self.engine.sampler
            info["weights_sha256"] = self.engine.weights.sha256
        return info

    async def start(self) -> None:
        """Loads the engine once, warms every batch size it will run, then opens for traffic."""
        s = self.settings
        self._loop = asyncio.get_running_loop()
        if self.engine_link is not None:
            return await self._connect_engine()
        batch_sizes = s.batch_sizes_for(pick_device(s.device).type)
        config = EngineConfig(device=s.device, precision=s.precision, batch_sizes=batch_sizes,
                              image_size_hw=s.image_hw, weights=s.weights, sampler=s.sampler,
                              check_inputs=str(EXAMPLES))
        started = time.perf_counter()
        self.engine = await asyncio.to_thread(self.engine_factory, config)
        if self.engine.weights.random:
            log.warning("SERVING RANDOM WEIGHTS: no checkpoint was found, every output is meaningless; "
                        "set TRYON_WEIGHTS or put a checkpoint in weights/ (X-Weights: random)")
        warmup = await asyncio.to_thread(self.engine.warmup)
        # The person detector is loaded and run once here, so the first plain photo is not slow.
        detector_s = await asyncio.to_thread(warm_detector)
        self.metrics.sampler.labels(sampler=self.engine.sampler).set(1)
        # Admission control starts from the smallest and largest batch timed once warm (sizes
        # between are interpolated) and follows every batch the engine runs from then on.
        rate = await asyncio.to_thread(ServiceRate.measured, self.engine.infer, s.image_hw,
                                       {batch_sizes[0], batch_sizes[-1]})
        self.batcher = Batcher(self.engine, max_batch_size=s.max_batch_size, max_wait_s=s.max_batch_wait_ms / 1000,
                               queue_limit=s.queue_limit, metrics=self.metrics, rate=rate,
                               on_device_failure=self.device_failed)
        self.batcher.start()
        self.fetcher = UrlFetcher(s)
        self.cache = self._open_cache()
        self.ready = True
        self.metrics.ready.set(1)
        log.info("ready", extra={"device": str(self.engine.device), "weights": self.weights_label,
                                 "warmup_s": {str(k): round(v, 3) for k, v in warmup.items()},
                                 "detector_warmup_s": round(detector_s, 3),
                                 "startup_s": round(time.perf_counter() - started, 3)})
        line = self.curl_line()
        log.info("try it: %s", line)
        print(line, flush=True)

    async def _connect_engine(self) -> None:
        """A front-end process: the engine process has loaded and warmed the model already."""
        link = self.engine_link
        arena = (link.arena_id, Arena(link.arena_fd, self.settings.image_hw)) if link.arena_fd is not None else None
        self.batcher = RemoteBatcher(on_lost=_engine_lost, arena=arena)
        self.engine = RemoteEngine(await self.batcher.connect(link.socket))
        self.metrics.queue_depth = ReportedElsewhere()  # the engine process's batcher sets it
        self.fetcher = UrlFetcher(self.settings)
        self.cache = self._open_cache()
        self.ready = True
        self.metrics.ready.set(1)
        log.info("front end ready", extra={"device": str(self.engine.device), "weights": self.weights_label})

    def _open_cache(self) -> ResponseCache | None:
        """The response cache, keyed by what makes an answer (model_identity); in every process
        that answers HTTP, so a front end of TRYON_WORKERS > 1 answers hits without the engine."""
        identity = model_identity(self.engine.weights.sha256, self.engine.precision, self.engine.sampler,
                                  self.settings.image_hw)
        return open_cache(self.settings, identity, self.metrics)

    @property
    def hello(self) -> dict:
        """What a front-end process learns of the engine when it connects (service/remote.py)."""
        weights = self.engine.weights
        return {"info": self.engine.info, "device": str(self.engine.device),
                "weights": {"name": weights.name, "random": weights.random, "sha256": weights.sha256}}

    def curl_line(self) -> str:
        s = self.settings
        host = "127.0.0.1" if s.host in ("0.0.0.0", "::", "") else s.host
        host = f"[{host}]" if ":" in host else host
        files = {name: EXAMPLES / f"{name}.png" for name in ("masked_model", "pose", "cloth")}
        parts = " ".join(f"-F {name}=@{path}" for name, path in files.items())
        key = " -H 'Authorization: Bearer YOUR_API_KEY'" if s.api_keys else ""
        return f"curl -sS -o tryon.jpg -D -{key} {parts} http://{host}:{s.port}/v1/tryon"

    @property
    def healthy(self) -> bool:
        """False once the device failed: every later batch would fail, so the process must go."""
        return self.batcher is None or self.batcher.device_failure is None

    def device_failed(self, reason: str) -> None:
        """The batcher saw the device break: liveness and readiness turn 503 and the process
        shuts down (SIGTERM to itself: the usual drain answers what it holds, then exits non-zero)."""
        self.metrics.ready.set(0)
        self.metrics.healthy.set(0)
        if self._loop is not None:
            self._loop.call_later(DEVICE_FAILURE_EXIT_DELAY_S, os.kill, os.getpid(), signal.SIGTERM)

    def begin_drain(self) -> None:
        """Called from the SIGTERM handler: readiness turns 503 at once; accepted work carries on."""
        self.draining = True
        self.metrics.ready.set(0)
        if self._loop is not None:
            depth = self.batcher.depth if self.batcher else 0
            self._loop.call_soon_threadsafe(log.info, "draining: readiness is now 503, finishing %d queued "
                                            "and in-flight requests", depth)

    async def stop(self) -> None:
        self.ready = False
        self.metrics.ready.set(0)
        if self.batcher is not None:
            await self.batcher.stop()
        if self.fetcher is not None:
            await self.fetcher.aclose()
        if self.cache is not None:
            await self.cache.close()
        log.info("stopped")


def _engine_lost() -> None:
    """A front end without its engine process (killed) serves nothing: it goes at once, as a single
    process would, so a load balancer's connections fail and it retries elsewhere."""
    os._exit(1)


async def get_service(request: Request) -> ServiceState:
    """(async: FastAPI would run a plain function in its thread pool, a thread hop per request)"""
    return request.app.state.service
