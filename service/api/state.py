"""What the app holds while it runs: settings, metrics, the warm engine, its queue
(``queue``: this process's Batcher, or a front end's RemoteBatcher) and the URL fetcher,
the state of each component (components.py), and whether it is ready or draining."""
from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from model.engine import Engine
from model.person import DetectorUnavailable, warm as warm_detector
from model.weights import WeightsError

from ..limits import ByteBudget
from ..logs import announce_ready
from ..metrics import Metrics, ReportedElsewhere
from ..processes.arena import Arena
from ..processes.exits import after_device_failure, log_drain
from ..processes.remote import EngineLink, RemoteBatcher, RemoteEngine
from ..queue.host import EngineFactory, EngineHost, weights_name
from ..queue.interface import WorkQueue
from ..settings import Settings
from .. import tracing
from .cache import ResponseCache, model_identity, open_cache
from ..codec.fetch import UrlFetcher
from ..jobs.wiring import Jobs
from .components import Components

log = logging.getLogger("service")


class ServiceState:
    def __init__(self, settings: Settings, engine_factory: EngineFactory | None = None,
                 engine_link: EngineLink | None = None):
        self.settings = settings
        self.metrics = Metrics(settings.max_batch_size)
        tracing.configure(self.metrics)  # from OTEL_* alone; off unless OTEL_TRACES_EXPORTER is set
        self.components = Components(self.metrics)
        self.budget = ByteBudget(settings.max_bytes_in_flight)
        # The engine and its queue: here (EngineHost), or behind engine_link in a front-end
        # process of TRYON_WORKERS > 1.
        self.engine_link = engine_link
        self.host = (EngineHost(settings, self.metrics, engine_factory, on_device_failure=self.device_failed)
                     if engine_link is None else None)
        self.engine: Engine | RemoteEngine | None = None
        self.queue: WorkQueue | None = None
        self.fetcher: UrlFetcher | None = None
        self.cache: ResponseCache | None = None
        self.jobs: Jobs | None = None
        self.ready = False
        self.draining = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._detector_warmup: asyncio.Task | None = None
        # The X-Weights header every answer carries once the engine is known, made once here.
        self.weights_header: str | None = None
        # Called on the event loop when SIGTERM comes (begin_drain): the gRPC server stops taking calls.
        self.on_drain: list[Callable[[], None]] = []

    @property
    def info(self) -> dict:
        s = self.settings
        status = ("device_failed" if not self.healthy else "weights_failed" if self.components.reason("weights")
                  else "draining" if self.draining else "ready" if self.ready else "starting")
        info = {"status": status, "ready": status == "ready", "draining": self.draining,
                "max_batch_size": s.max_batch_size, "max_batch_wait_ms": s.max_batch_wait_ms,
                "queue_limit": s.queue_limit, "queue_depth": self.queue.depth if self.queue else 0,
                "request_timeout_s": s.request_timeout_s,
                # sampler: the one in use (the engine's, once loaded); requested_sampler: what TRYON_SAMPLER asked for.
                "sampler": None, "requested_sampler": s.sampler,
                "cache": self.cache.store.name if self.cache else None,
                "jobs": self.jobs_info, "components": self.components.info}
        if not self.healthy:
            info["device_failure"] = self.queue.device_failure
        if self.queue is not None and self.queue.rate is not None:
            info["service_seconds_by_batch_size"] = {str(k): round(v, 4) for k, v in self.queue.rate.snapshot().items()}
        if self.engine is not None:
            info |= self.engine.info
            info["weights_sha256"] = self.engine.weights.sha256
        return info

    async def start(self) -> None:
        """Loads the engine once, warms what the first requests need (EngineHost.start), opens
        for traffic, then warms the person detector."""
        self._loop = asyncio.get_running_loop()
        # Every thread the edge hands work to (decoding, encoding, detection: asyncio.to_thread) is one
        # of these few, so a flood of images costs a few cores and their memory, not a thread each. (Not
        # at a lower priority: one holding the GIL and descheduled on a busy machine would hold the loop.)
        self._loop.set_default_executor(ThreadPoolExecutor(self.settings.decode_threads or len(os.sched_getaffinity(0)),
                                                           thread_name_prefix="tryon-decode"))
        if self.engine_link is not None:
            await self._connect_engine()
        else:
            try:
                await self.host.start()
            except WeightsError as exc:
                return self._start_without_weights(str(exc))
            self.engine, self.queue = self.host.engine, self.host.batcher
        self.weights_header = weights_name(self.engine.weights)
        self.fetcher = UrlFetcher(self.settings)
        self.cache = self._open_cache()
        self._start_jobs()
        self._watch_components()
        self.ready = True
        self.metrics.ready.set(1)
        if self.engine_link is None:
            announce_ready(self.settings, str(self.engine.device), self.weights_header, self.host.startup_s)
        else:
            log.info("front end ready", extra={"device": str(self.engine.device), "weights": self.weights_header})
        self._warm_detector()

    async def _connect_engine(self) -> None:
        """A front-end process: the engine process has loaded and warmed the model already."""
        link = self.engine_link
        arena = (link.arena_id, Arena(link.arena_fd, self.settings.image_hw)) if link.arena_fd is not None else None
        self.queue = RemoteBatcher(on_lost=_engine_lost, arena=arena)
        self.engine = RemoteEngine(await self.queue.connect(link.socket))
        self.metrics.queue_depth = ReportedElsewhere()  # the engine process's batcher sets it

    def _start_without_weights(self, reason: str) -> None:
        """The checkpoint could not be read: the process starts and stays unready (/readyz 503, so
        no load balancer sends it work; /healthz 200, so it is not restarted into the same
        failure), says why, answers try-ons 503 weights_unavailable, and serves what needs no
        network (/v1/prepare)."""
        self.components.failed("weights", reason, "never ready: try-ons answer 503 weights_unavailable")
        self.fetcher = UrlFetcher(self.settings)
        self._warm_detector()

    def _watch_components(self) -> None:
        """The network's parts as the engine loaded them; the stores as they answer."""
        self.components.ready("weights")
        fallback = self.engine.info.get("sampler_fallback")
        if fallback:
            self.components.failed("sampler", fallback, f"the {self.engine.sampler} reference sampler serves")
        else:
            self.components.ready("sampler")
        if self.cache is not None:
            self.components.watch("cache", lambda: self.cache.store.failure)
        if self.jobs is not None:
            self.components.watch("jobs_store", lambda: self.jobs.store.failure)

    def _warm_detector(self) -> None:
        """The person detector (mediapipe's graphs: seconds on a busy CPU) loads after readiness,
        in each process that reads photos: nothing but a photo needs it, and a photo that comes
        first waits for it (``get_detector``'s lock) and is answered as any other, only later.
        One that fails to load is a failed component: photos answer 503, all else is served."""
        self.components.loading("person_detector")

        async def warm() -> None:
            try:
                seconds = await asyncio.to_thread(warm_detector)
            except DetectorUnavailable as exc:
                self.components.failed("person_detector", exc.reason, "photos sent without a masked model "
                                       "and pose map answer 503 person_detector_unavailable")
                return
            self.components.ready("person_detector")
            log.info("person detector warm", extra={"detector_warmup_s": round(seconds, 3)})
        self._detector_warmup = asyncio.get_running_loop().create_task(warm())

    @property
    def jobs_info(self) -> dict | None:
        """/readyz's ``jobs``: the store, or why /v1/jobs is not served here."""
        if self.settings.jobs_unavailable:
            return {"store": None, "available": False, "reason": self.settings.jobs_unavailable}
        return self.jobs.info if self.jobs else None

    def _start_jobs(self) -> None:
        """Catalog jobs: this process's runner takes tasks from the store and runs them through the queue
        (none where the settings say they cannot be served: Settings.jobs_unavailable)."""
        if self.settings.jobs_enabled and not self.settings.jobs_unavailable:
            chunk_size = self.settings.garment_chunk_for(self.engine.device.type)
            self.jobs = Jobs(self.settings, self.queue, self.fetcher, chunk_size, self.metrics, self.budget)
            self.jobs.start()

    def _open_cache(self) -> ResponseCache | None:
        """The response cache, keyed by what makes an answer (model_identity); in every process
        that answers HTTP, so a front end of TRYON_WORKERS > 1 answers hits without the engine."""
        identity = model_identity(self.engine.weights.sha256, self.engine.precision, self.engine.sampler,
                                  self.settings.image_hw)
        return open_cache(self.settings, identity, self.metrics)

    @property
    def local_engine_device(self):
        """The device of an engine in this process; None in a front end of TRYON_WORKERS > 1, whose
        engine (a RemoteEngine reporting, say, cuda:0) is another process's: nothing here may open
        a CUDA context on it (half a GB per front end, and refused in exclusive-process mode)."""
        return self.engine.device if self.engine is not None and self.engine_link is None else None

    @property
    def healthy(self) -> bool:
        """False once the device failed: every later batch would fail, so the process must go."""
        return self.queue is None or self.queue.device_failure is None

    def device_failed(self, reason: str) -> None:
        """The batcher saw the device break: liveness and readiness turn 503 and the process
        shuts down (SIGTERM to itself: the usual drain answers what it holds, then exits non-zero)."""
        after_device_failure(self.metrics, self._loop)

    def begin_drain(self) -> None:
        """Called from the SIGTERM handler: readiness turns 503 at once; accepted work carries on."""
        self.draining = True
        self.metrics.ready.set(0)
        if self._loop is not None:
            for hook in self.on_drain:
                self._loop.call_soon_threadsafe(hook)
            depth = self.queue.depth if self.queue else 0
            self._loop.call_soon_threadsafe(log_drain, log, depth)

    async def stop(self) -> None:
        self.ready = False
        self.metrics.ready.set(0)
        if self.jobs is not None:  # before the queue: its unfinished tasks stay in the store
            await self.jobs.stop()
        if self.queue is not None:
            await self.queue.stop()
        if self.fetcher is not None:
            await self.fetcher.aclose()
        if self.cache is not None:
            await self.cache.close()
        tracing.shutdown()
        log.info("stopped")


def _engine_lost() -> None:
    """A front end without its engine process (killed) serves nothing: it goes at once, as a single
    process would, so a load balancer's connections fail and it retries elsewhere."""
    os._exit(1)
