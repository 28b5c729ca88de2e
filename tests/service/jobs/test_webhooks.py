"""The webhook sender (service/jobs/webhooks.py) in this process, on a fake clock (its ``clock`` and
``sleep``) with the embedded store, delivering to a real receiver on 127.0.0.1: retries after each
delay of TRYON_WEBHOOK_RETRY_S within its jitter, the store told the delivery is still held every
``keep_every_s`` of each wait, every attempt dated by the clock and signed; attempts used up counted
as exhausted; a 410 ends it at once. Through a real server: tests/service/api/routes/test_jobs.py;
across replicas: tests/service/jobs/test_wiring.py."""
from __future__ import annotations

import asyncio

from standardwebhooks import Webhook

from service.jobs.records import GarmentState, JobInputs, NewJob, new_job_id
from service.jobs.store import MemoryJobStore
from service.jobs.webhooks import JITTER, WebhookSender, WebhookTarget
from service.metrics import Metrics
from tests.utils.clock import FakeClock
from tests.utils.jobs import SECRET, WebhookReceiver

RETRY_S = [5.0, 30.0]
KEEP_EVERY_S = 2.0


class KeptStore(MemoryJobStore):
    """The embedded store, recording when (on the clock) it is told a delivery is still held, and
    setting ``finished`` once the sender is done with a delivery."""

    def __init__(self, clock: FakeClock):
        super().__init__(max_jobs=10, max_bytes=1 << 20, retention_s=600, task_garments=1, clock=clock)
        self.kept: list[float] = []
        self.finished = asyncio.Event()

    async def keep(self, ref: str, deliveries: bool = False) -> None:
        assert deliveries
        self.kept.append(self.clock())

    async def finish_delivery(self, delivery) -> None:
        self.finished.set()


class DirectTargets:
    """Every URL allowed, connected to as given (the URL rules are tests/service/test_limits.py's)."""

    async def target(self, url: str) -> WebhookTarget:
        return WebhookTarget(url, url.split("/")[2], None)


def outcomes(metrics: Metrics) -> dict[str, float]:
    return {outcome: metrics.registry.get_sample_value("tryon_webhook_deliveries_total", {"outcome": outcome}) or 0.0
            for outcome in ("delivered", "failed", "gone", "exhausted")}


def deliver(fail_first: int, status: int = 500):
    """One ended job's webhook sent to a receiver answering ``status`` to its first ``fail_first``
    deliveries, until the sender is done with it: (the job's id, the deliveries, the clock, the store,
    the metrics)."""
    async def scenario():
        clock = FakeClock()
        store, metrics = KeptStore(clock), Metrics(2)
        sender = WebhookSender(store, DirectTargets(), lambda owner: (SECRET,), RETRY_S, timeout_s=10,
                               keep_every_s=KEEP_EVERY_S, metrics=metrics, clock=clock, sleep=clock.sleep)
        job = NewJob(new_job_id(), "", {}, JobInputs({}, None, [b"x"]), clock() + 600, webhook_url=receiver.url)
        job_id, _ = await store.create(job)
        await store.settle(job_id, 0, GarmentState(), b"result")  # the job ends: its delivery is queued
        stopping = asyncio.Event()
        running = asyncio.get_running_loop().create_task(sender.run(stopping))
        try:
            await asyncio.wait_for(store.finished.wait(), 20)
        finally:
            stopping.set()
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
            await sender.close()
        return job_id, list(receiver.deliveries), clock, store, metrics

    receiver = WebhookReceiver(fail_first=fail_first, status=status)
    try:
        return asyncio.run(scenario())
    finally:
        receiver.close()


def test_retries_follow_the_schedule_within_its_jitter_and_the_store_is_kept_told():
    job_id, deliveries, clock, store, metrics = deliver(fail_first=2)
    assert [status for _, _, status in deliveries] == [500, 500, 204]
    stamps = [int(headers["webhook-timestamp"]) for headers, _, _ in deliveries]
    waits = [later - earlier for earlier, later in zip(stamps, stamps[1:])]
    for wait, delay in zip(waits, RETRY_S):  # whole seconds on the clock: one either side for the rounding
        assert delay * (1 - JITTER) - 1 <= wait <= delay * (1 + JITTER) + 1, (waits, RETRY_S)
    # Each wait is slept in steps of at most keep_every_s, each followed by a word to the store.
    assert clock.slept and max(clock.slept) <= KEEP_EVERY_S and len(store.kept) == len(clock.slept)
    verifier = Webhook(SECRET)
    for headers, body, _ in deliveries:
        verifier.verify(body, headers)  # dated by the clock, which starts at the real time: within tolerance
        assert headers["webhook-id"] == f"msg_{job_id}"
    assert outcomes(metrics) == {"delivered": 1, "failed": 2, "gone": 0, "exhausted": 0}


def test_attempts_used_up_are_counted_as_exhausted():
    _, deliveries, _, _, metrics = deliver(fail_first=10)
    assert [status for _, _, status in deliveries] == [500] * (len(RETRY_S) + 1)
    assert outcomes(metrics) == {"delivered": 0, "failed": len(RETRY_S) + 1, "gone": 0, "exhausted": 1}


def test_a_410_ends_the_delivery_without_a_retry():
    _, deliveries, clock, store, metrics = deliver(fail_first=10, status=410)
    assert [status for _, _, status in deliveries] == [410]
    assert clock.slept == [] and store.kept == []  # no wait for a retry
    assert outcomes(metrics) == {"delivered": 0, "failed": 0, "gone": 1, "exhausted": 0}
