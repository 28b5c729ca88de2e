"""The ``Jobs`` that ServiceState starts and stops: the job store, this replica's runner and its
webhook sender (service/jobs/). The runner decodes and encodes through the codec, as the routes
do, and the sender checks webhook URLs by the fetcher's rules: nothing of the edge's is handed down."""
from __future__ import annotations

import asyncio
import logging

from ..codec.fetch import UrlFetcher
from ..jobs.redis_store import RedisJobStore
from ..jobs.runner import JobRunner
from ..jobs.store import JobStore, MemoryJobStore
from ..jobs.targets import FetcherTargets
from ..jobs.webhooks import WebhookSender
from ..metrics import Metrics
from ..queue.interface import JobQueue
from ..settings import Settings

log = logging.getLogger("service.jobs")


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
        self.runner = JobRunner(self.store, queue, settings, chunk_size, settings.jobs_concurrency,
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
