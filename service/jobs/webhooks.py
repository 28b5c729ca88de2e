"""Telling a job's webhook that the job ended, per Standard Webhooks
(https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md).

Each delivery is a POST of ``{"type": "job.<status>", "timestamp", "data": <the status
document>}`` with ``webhook-id`` (``msg_`` + the job's id: the same on every attempt, from
every replica), ``webhook-timestamp`` (this attempt's, in seconds) and ``webhook-signature``
(``v1,`` + base64 of HMAC-SHA256 over ``id.timestamp.body`` with the bytes of the ``whsec_``
secret; the secrets of the job's API key, each tenant its own, and while one is rotated out
both, space-separated, so a receiver holding either verifies). A 2xx ends it; 410 Gone ends it too (the receiver wants no more); anything else,
and a timeout, is retried after the next delay of TRYON_WEBHOOK_RETRY_S (the spec's schedule
by default), each with +-20 % jitter. The URL is checked by the URL rules again before every
attempt (DNS can change since submission) and the connection goes to the checked address.
An attempt has one deadline, TRYON_WEBHOOK_TIMEOUT_S, from the URL check to the reply's last
byte read (a receiver dripping a byte a second can not hold a delivery slot longer), and of
the reply only its status and at most REPLY_BYTES of body are read, then the connection is dropped.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import random
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Protocol

import httpx

from .. import tracing
from ..metrics import Metrics
from .records import Delivery
from .store import JobStore, StoreUnavailable

log = logging.getLogger("service.jobs.webhooks")
JITTER = 0.2
MAX_DELIVERIES = 64  # deliveries under way (and waiting to retry) at once in one replica
REPLY_BYTES = 4096  # of a receiver's reply body: read (so a short reply ends cleanly), never kept


class WebhookRefused(Exception):
    """The URL breaks the URL rules (now): not delivered."""


@dataclass(frozen=True)
class WebhookTarget:
    """Where one attempt connects: the URL with the checked address as host, and the real name."""
    url: str
    host_header: str
    sni_hostname: str | None


class WebhookTargets(Protocol):
    async def target(self, url: str) -> WebhookTarget:
        """The checked target, or WebhookRefused."""


def sign(secrets: tuple[str, ...], message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: one ``v1,`` signature per secret, space-separated."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    return " ".join("v1," + base64.b64encode(hmac.new(base64.b64decode(secret.removeprefix("whsec_")), signed,
                                                      hashlib.sha256).digest()).decode() for secret in secrets)


def payload(document: dict) -> bytes:
    return json.dumps({"type": f"job.{document['status']}", "timestamp": document["finished_at"],
                       "data": document}, separators=(",", ":")).encode()


@dataclass(eq=False)
class WebhookSender:
    """Delivers the store's queued webhooks, signed with the secrets ``secrets_of`` gives a job's owner
    (none: not sent). ``clock`` (the wall clock of ``webhook-timestamp``) and ``sleep`` (the waits between
    attempts): a test may drive its own."""
    store: JobStore
    targets: WebhookTargets
    secrets_of: Callable[[str], tuple[str, ...]]
    retry_s: list[float]
    timeout_s: float
    keep_every_s: float
    metrics: Metrics
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    def __post_init__(self) -> None:
        self.client = httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=False, trust_env=False,
                                        limits=httpx.Limits(max_keepalive_connections=0),
                                        headers={"User-Agent": "tryon-service-webhooks",
                                                 "Content-Type": "application/json"})
        self._slots = asyncio.Semaphore(MAX_DELIVERIES)
        self._tasks: set[asyncio.Task] = set()

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            await self._slots.acquire()
            try:
                delivery = await self.store.next_delivery(1.0)
            except StoreUnavailable as exc:
                self._slots.release()
                log.warning("webhook deliveries: %s", exc)
                await asyncio.sleep(1)
                continue
            if delivery is None:
                self._slots.release()
                continue
            task = asyncio.get_running_loop().create_task(self._deliver(delivery))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.client.aclose()

    async def _deliver(self, delivery: Delivery) -> None:
        try:
            record = await self.store.record(delivery.job_id)
            secrets = self.secrets_of(record.owner) if record is not None else ()
            if record is not None and record.webhook_url and secrets:
                await self._attempts(delivery, record.webhook_url, payload(record.document()), secrets)
            await self.store.finish_delivery(delivery)
        except StoreUnavailable as exc:  # left pending: this or another replica takes it up again
            log.warning("webhook of %s: %s", delivery.job_id, exc)
        finally:
            self._slots.release()

    async def _attempts(self, delivery: Delivery, url: str, body: bytes, secrets: tuple[str, ...]) -> None:
        message_id = f"msg_{delivery.job_id}"
        for attempt, delay in enumerate([0.0, *self.retry_s]):
            if delay:
                await self._wait(delivery, delay * random.uniform(1 - JITTER, 1 + JITTER))
            outcome = await self._attempt(url, message_id, body, secrets)
            self.metrics.webhook_deliveries.labels(outcome).inc()
            log.info("webhook %s", outcome, extra={"job": delivery.job_id, "attempt": attempt + 1})
            if outcome in ("delivered", "gone", "refused"):
                return
        self.metrics.webhook_deliveries.labels("exhausted").inc()
        log.warning("webhook of %s not delivered after %d attempts", delivery.job_id, len(self.retry_s) + 1)

    async def _wait(self, delivery: Delivery, seconds: float) -> None:
        """Sleeps, telling the store now and then that the delivery is still this replica's."""
        left = seconds
        while left > 0:
            step = min(left, self.keep_every_s)
            await self.sleep(step)
            left -= step
            try:
                await self.store.keep(delivery.ref, deliveries=True)
            except StoreUnavailable:
                pass

    @tracing.traced("webhook")
    async def _attempt(self, url: str, message_id: str, body: bytes, secrets: tuple[str, ...]) -> str:
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._send(url, message_id, body, secrets)
        except TimeoutError:
            return "failed"

    async def _send(self, url: str, message_id: str, body: bytes, secrets: tuple[str, ...]) -> str:
        try:
            target = await self.targets.target(url)
        except WebhookRefused as exc:
            log.warning("webhook URL refused at delivery: %s", exc)
            return "refused"
        timestamp = int(self.clock())
        headers = {"webhook-id": message_id, "webhook-timestamp": str(timestamp),
                   "webhook-signature": sign(secrets, message_id, timestamp, body), "Host": target.host_header,
                   **tracing.carrier()}  # with tracing on: the attempt's span, as traceparent
        extensions = {"sni_hostname": target.sni_hostname} if target.sni_hostname else {}
        request = self.client.build_request("POST", target.url, content=body, headers=headers,
                                            extensions=extensions)
        try:
            response = await self.client.send(request, stream=True)
        except httpx.HTTPError:
            return "failed"
        try:
            read = 0
            async for chunk in response.aiter_raw():
                read += len(chunk)
                if read >= REPLY_BYTES:
                    break
        except httpx.HTTPError:
            pass  # the status has arrived: a broken reply body changes nothing
        finally:
            await response.aclose()
        if response.is_success:
            return "delivered"
        return "gone" if response.status_code == 410 else "failed"
