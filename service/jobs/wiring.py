"""The ``Jobs`` that the edge's ServiceState builds, starts and stops: the job store, this replica's
runner and its webhook sender. The runner decodes and encodes through the codec (``TaskCodec``),
as the routes do, and the sender checks webhook URLs by the fetcher's rules (``FetcherTargets``):
both built here from the settings, nothing of the edge's handed down."""
from __future__ import annotations

import asyncio
import hashlib
import logging

from ..codec.fetch import UrlFetcher
from ..limits import ByteBudget
from ..metrics import Metrics
from ..queue.interface import WorkQueue
from ..settings import Settings
from .redis_store import RedisJobStore
from .runner import JobRunner, TaskCodec
from .store import JobStore, MemoryJobStore
from .targets import FetcherTargets
from .webhooks import WebhookSender

log = logging.getLogger("service.jobs")


def owner_of(key: str) -> str:
    """What a job keeps of the API key that created it: a hash, never the key."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def webhook_secrets(settings: Settings):
    """A job's owner -> the secrets its webhooks are signed with (Settings.key_secrets; with API keys off,
    TRYON_WEBHOOK_SECRET's)."""
    by_owner = {owner_of(key): secrets for key, secrets in settings.key_secrets.items()}
    if not settings.api_keys:
        by_owner[""] = settings.webhook_secrets
    return lambda owner: by_owner.get(owner, ())


def open_store(settings: Settings) -> JobStore:
    if settings.jobs_url:
        return RedisJobStore(settings.jobs_url, settings.jobs_timeout_ms / 1000, settings.jobs_retention_s,
                             settings.jobs_task_garments, settings.jobs_claim_after_s)
    return MemoryJobStore(settings.jobs_memory_jobs, settings.jobs_memory_bytes, settings.jobs_retention_s,
                          settings.jobs_task_garments)


class Jobs:
    """The store, and this replica's runner and webhook sender running beside the HTTP server."""

    def __init__(self, settings: Settings, queue: WorkQueue, fetcher: UrlFetcher, chunk_size: int,
                 metrics: Metrics, budget: ByteBudget):
        self.settings = settings
        self.metrics = metrics
        self.store = open_store(settings)
        keep_every_s = settings.jobs_claim_after_s / 3
        self.runner = JobRunner(self.store, queue, TaskCodec(settings), chunk_size, settings.jobs_concurrency,
                                keep_every_s, metrics, budget)
        self.sender = WebhookSender(self.store, FetcherTargets(fetcher), webhook_secrets(settings),
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
