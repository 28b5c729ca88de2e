"""What the app holds while it runs: settings, metrics, the warm engine, the
batcher and the URL fetcher, and whether it is ready or draining."""
from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from fastapi import Request

from model.engine import Engine, EngineConfig, pick_device
from model.kernels import resolve as resolve_sampler
from model.person import warm as warm_detector

from .batcher import Batcher
from .fetch import UrlFetcher
from .metrics import Metrics
from .settings import Settings

log = logging.getLogger("service")
EXAMPLES = Path(__file__).resolve().parent / "examples"


class ServiceState:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.metrics = Metrics(settings.max_batch_size)
        self.engine: Engine | None = None
        self.batcher: Batcher | None = None
        self.fetcher: UrlFetcher | None = None
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
        status = "draining" if self.draining else "ready" if self.ready else "starting"
        info = {"status": status, "ready": status == "ready", "draining": self.draining,
                "max_batch_size": s.max_batch_size, "max_batch_wait_ms": s.max_batch_wait_ms,
                "queue_limit": s.queue_limit, "queue_depth": self.batcher.depth if self.batcher else 0,
                "request_timeout_s": s.request_timeout_s, "sampler": s.sampler}
        if self.engine is not None:
            info |= self.engine.info
            info["sampler_in_use"] = resolve_sampler(s.sampler, self.engine.device)
            info["weights_sha256"] = self.engine.weights.sha256
        return info

    async def start(self) -> None:
        """Loads the engine once, warms every batch size it will run, then opens for traffic."""
        s = self.settings
        self._loop = asyncio.get_running_loop()
        batch_sizes = s.batch_sizes_for(pick_device(s.device).type)
        config = EngineConfig(device=s.device, precision=s.precision, batch_sizes=batch_sizes,
                              image_size=s.image_hw, weights=s.weights, sampler=s.sampler)
        started = time.perf_counter()
        self.engine = await asyncio.to_thread(Engine, config)
        if self.engine.weights.random:
            log.warning("SERVING RANDOM WEIGHTS: no checkpoint was found, every output is meaningless; "
                        "set TRYON_WEIGHTS or put a checkpoint in weights/ (X-Weights: random)")
        warmup = await asyncio.to_thread(self.engine.warmup)
        # The person detector is loaded and run once here, so the first plain photo is not slow.
        detector_s = await asyncio.to_thread(warm_detector)
        self.batcher = Batcher(self.engine, max_batch_size=s.max_batch_size, max_wait_s=s.max_batch_wait_ms / 1000,
                               queue_limit=s.queue_limit, metrics=self.metrics)
        self.batcher.start()
        self.fetcher = UrlFetcher(s)
        self.ready = True
        self.metrics.ready.set(1)
        log.info("ready", extra={"device": str(self.engine.device), "weights": self.weights_label,
                                 "warmup_s": {str(k): round(v, 3) for k, v in warmup.items()},
                                 "detector_warmup_s": round(detector_s, 3),
                                 "startup_s": round(time.perf_counter() - started, 3)})
        line = self.curl_line()
        log.info("try it: %s", line)
        print(line, flush=True)

    def curl_line(self) -> str:
        s = self.settings
        host = "127.0.0.1" if s.host in ("0.0.0.0", "::", "") else s.host
        host = f"[{host}]" if ":" in host else host
        files = {name: EXAMPLES / f"{name}.png" for name in ("masked_model", "pose", "cloth")}
        parts = " ".join(f"-F {name}=@{path}" for name, path in files.items())
        key = " -H 'Authorization: Bearer YOUR_API_KEY'" if s.api_keys else ""
        return f"curl -sS -o tryon.jpg -D -{key} {parts} http://{host}:{s.port}/v1/tryon"

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
        log.info("stopped")


def get_service(request: Request) -> ServiceState:
    return request.app.state.service
