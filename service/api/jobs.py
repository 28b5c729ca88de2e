"""The edge's side of catalog jobs (service/jobs/): what only the edge knows, handed to the
job room (decoding and encoding as /v1/tryon/batch does them, /v1/tryon's error codes, the
URL rules for webhooks), and the ``Jobs`` that ServiceState starts and stops."""
from __future__ import annotations

import asyncio
import logging

import torch

from ..jobs.records import JobError, JobInputs
from ..jobs.redis_store import RedisJobStore
from ..jobs.runner import DecodedTask, JobRunner
from ..jobs.store import JobStore, MemoryJobStore
from ..jobs.webhooks import WebhookRefused, WebhookSender, WebhookTarget
from ..metrics import Metrics
from ..queue.interface import JobQueue
from ..queue.outcomes import QueueError
from ..settings import Settings
from .errors import ApiError, from_queue_error
from ..codec.fetch import UrlFetcher
from ..codec.sources import RequestParts
from .inputs import OutputOptions
from .parts import encode_output
from ..codec.person import decode_garments, decode_person

log = logging.getLogger("service.jobs")


def job_error(exc: ApiError) -> JobError:
    return JobError(exc.status, exc.code, exc.message, exc.field)


class EdgeCodec:
    """Decoding and encoding as /v1/tryon/batch does them; errors with its codes."""

    def __init__(self, settings: Settings):
        self.settings = settings

    def decode(self, inputs: JobInputs) -> DecodedTask:
        cloths = [ApiError(c.status, c.code, c.message, c.field) if isinstance(c, JobError) else c
                  for c in inputs.cloths]
        try:
            person = decode_person(RequestParts(dict(inputs.person), inputs.keypoints, cloths), self.settings)
        except ApiError as exc:
            return DecodedTask(None, [job_error(exc)] * len(cloths))
        garments = decode_garments(person, cloths, self.settings)
        return DecodedTask(person.frame, [job_error(g) if isinstance(g, ApiError) else g for g in garments])

    def encode(self, output: torch.Tensor, frame, options: dict) -> bytes:
        return encode_output(output, frame, OutputOptions.model_validate(options))

    def error_of(self, exc: QueueError) -> JobError:
        return job_error(from_queue_error(exc))


class FetcherTargets:
    """Webhook URLs under the rules fetched URLs follow (service/codec/fetch.py)."""

    def __init__(self, fetcher: UrlFetcher):
        self.fetcher = fetcher

    async def target(self, url: str) -> WebhookTarget:
        try:
            pinned = await self.fetcher.pin(url, "webhook_url")
        except ApiError as exc:
            raise WebhookRefused(exc.message) from None
        return WebhookTarget(str(pinned.url), pinned.host_header, pinned.sni_hostname)


def open_store(settings: Settings) -> JobStore:
    if settings.jobs_url:
        return RedisJobStore(settings.jobs_url, settings.jobs_timeout_ms / 1000, settings.jobs_retention_s,
                             settings.jobs_task_garments, settings.jobs_claim_after_s)
    return MemoryJobStore(settings.jobs_memory_jobs, settings.jobs_memory_bytes, settings.jobs_retention_s,
                          settings.jobs_task_garments)


class Jobs:
    """The store, and this replica's runner and webhook sender running beside the HTTP server."""

    def __init__(self, settings: Settings, queue: JobQueue, fetcher: UrlFetcher, chunk_size: int,
                 metrics: Metrics):
        self.settings = settings
        self.metrics = metrics
        self.store = open_store(settings)
        keep_every_s = settings.jobs_claim_after_s / 3
        self.runner = JobRunner(self.store, queue, EdgeCodec(settings), chunk_size, settings.jobs_concurrency,
                                keep_every_s, metrics)
        self.sender = WebhookSender(self.store, FetcherTargets(fetcher), settings.webhook_secret,
                                    settings.webhook_retry_s, settings.webhook_timeout_s, keep_every_s, metrics)
        self._tasks: list[asyncio.Task] = []

    @property
    def info(self) -> dict:
        if self.store.shared:
            return {"store": "redis", "shared": True, "available": True}
        return {"store": "memory", "shared": False, "available": True, "note": "jobs live in this process only: bounded "
                "(TRYON_JOBS_MEMORY_JOBS, TRYON_JOBS_MEMORY_BYTES) and lost on restart; set TRYON_JOBS_URL"}

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self.runner.run()), loop.create_task(self.sender.run(self.runner.stopping))]

    async def refresh_metrics(self) -> None:
        try:
            self.metrics.jobs_oldest_queued.set(await self.store.oldest_queued_s())
        except Exception as exc:  # noqa: BLE001  (a scrape must answer whatever the store does)
            log.warning("oldest queued job: %s", exc)

    async def stop(self) -> None:
        """Unfinished tasks stay in the store (Redis: another replica takes them over)."""
        self.runner.stopping.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.sender.close()
        await self.store.close()
