"""The scheduler in-process, with engine stand-ins that play a GPU (none runs here):
priorities, admission control, out-of-memory splits, a device that breaks, and
shutdown answering everything it holds. Through a real server: test_service_queue.py."""
from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch

from model import device_errors
from model.device_errors import device_failure, is_out_of_memory
from model.images import Letterbox, TryOnInputs
from service.queue.admission import ServiceRate
from service.queue.batcher import Batcher
from service.queue.jobs import GarmentsInputs
from service.queue.splitting import infer_splitting_on_oom
from service.api.errors import from_queue_error
from service.metrics import Metrics
from service.queue.outcomes import (DeadlineTooShort, DeviceFailed, DeviceOutOfMemory, Overloaded, Priority, QueueError,
                                    ShuttingDown)
from tests.fixtures.standin_engine import StandInEngine

ILLEGAL_ADDRESS = "CUDA error: an illegal memory access was encountered\nCUDA kernel errors might be reported..."
CUDNN_ALLOC = "cuDNN error: CUDNN_STATUS_ALLOC_FAILED"


def single(tag: int, size: int = 4) -> TryOnInputs:
    """A request whose pose and cloth hold its tag, so the stand-in engine (which answers the
    cloth) can tell who ran in which batch."""
    pose = torch.full((3, size, size), float(tag))
    return TryOnInputs(masked_model=torch.zeros(3, size, size), pose=pose, cloth=pose.clone(),
                       person_frame=Letterbox((size, size), (size, size)))


def garments(tag: int, n: int, chunk: int = 1) -> GarmentsInputs:
    pose = torch.full((3, 4, 4), float(tag))
    return GarmentsInputs(pose, torch.zeros(3, 4, 4), torch.zeros(n, 3, 4, 4), chunk)


def make_batcher(engine, *, max_batch_size: int = 2, max_wait_s: float = 0.0, queue_limit: int = 64,
                 rate: ServiceRate | None = None, **kwargs) -> Batcher:
    return Batcher(engine, max_batch_size=max_batch_size, max_wait_s=max_wait_s, queue_limit=queue_limit,
                   metrics=Metrics(max_batch_size), rate=rate, **kwargs)


def deadline(seconds: float = 30) -> float:
    return asyncio.get_running_loop().time() + seconds


async def engine_called(engine: StandInEngine, times: int = 1) -> None:
    """Returns once the engine has been called ``times`` times (it may still be held by its gate)."""
    while len(engine.calls) < times:
        await asyncio.sleep(0.01)


# -- out of memory ----------------------------------------------------------------------------------

class OomAboveEngine(StandInEngine):
    """Raises an out-of-memory error (torch's, or cuDNN's plain RuntimeError) above ``limit`` items."""

    def __init__(self, limit: int, error=torch.cuda.OutOfMemoryError("CUDA out of memory")):
        super().__init__()
        self.limit = limit
        self.error = error
        self.calls: list[int] = []

    def infer(self, pose, masked_model, cloth):
        self.calls.append(pose.shape[0])
        if pose.shape[0] > self.limit:
            raise self.error
        return cloth


def test_oom_split_keeps_every_item():
    engine = OomAboveEngine(limit=2)
    items = [single(i) for i in range(7)]
    stack = {n: torch.stack([getattr(x, n) for x in items]) for n in ("pose", "masked_model", "cloth")}
    splits = []
    outputs = infer_splitting_on_oom(engine.infer, stack["pose"], stack["masked_model"], stack["cloth"],
                                     splits.append)
    assert len(outputs) == 7
    for item, out in zip(items, outputs):
        assert torch.equal(out, item.cloth)
    assert engine.calls == [7, 4, 2, 2, 3, 2, 1]  # halves until each part fits
    assert splits == [7, 4, 3]


@pytest.mark.parametrize("error", [torch.cuda.OutOfMemoryError("CUDA out of memory"), RuntimeError(CUDNN_ALLOC)],
                         ids=["torch", "cudnn"])
def test_batcher_splits_on_any_oom_and_loses_no_request(error):
    async def scenario(limit: int):
        engine = OomAboveEngine(limit, error)
        batcher = make_batcher(engine, max_batch_size=8, max_wait_s=0.05)
        batcher.start()
        jobs = [batcher.submit(single(i), deadline()) for i in range(5)]
        results = await asyncio.gather(*(j.future for j in jobs), return_exceptions=True)
        await batcher.stop()
        return results, engine, batcher.metrics

    results, engine, metrics = asyncio.run(scenario(limit=2))
    assert engine.calls == [5, 3, 2, 1, 2]  # one batch formed, then split: 5 -> 3 -> (2, 1), 2
    for i, result in enumerate(results):
        assert torch.equal(result.output, single(i).pose * 1)
        assert result.batch_size == 5
    assert metrics.oom_splits._value.get() == 2
    # Out of memory even for one item: each request gets its own 503, none hangs or vanishes.
    results, _, _ = asyncio.run(scenario(limit=0))
    assert all(isinstance(r, DeviceOutOfMemory) for r in results)
    assert {(from_queue_error(r).status, from_queue_error(r).code) for r in results} == {(503, "out_of_memory")}


def test_errors_are_told_apart_by_what_they_mean_for_the_device():
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("x")) and is_out_of_memory(RuntimeError(CUDNN_ALLOC))
    assert device_failure(RuntimeError(ILLEGAL_ADDRESS)).startswith("CUDA error: an illegal memory access")
    assert device_failure(RuntimeError("CUDA error: device-side assert triggered")) is not None
    assert device_failure(RuntimeError(CUDNN_ALLOC)) is None  # recoverable: handled as out of memory
    assert device_failure(RuntimeError("shape mismatch")) is None and device_failure(ValueError("x")) is None


class FailsAtChunk(StandInEngine):
    """Runs out of memory once, at chunk ``fail_at`` of a garments job."""

    def __init__(self, fail_at: int):
        super().__init__()
        self.fail_at = fail_at

    def iter_garments(self, pose, masked_model, cloths, chunk_size=None):
        for start in range(cloths.shape[0]):
            if start == self.fail_at:
                self.fail_at = None
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (stand-in)")
            yield start, cloths[start:start + 1] * 0


def test_garments_job_failing_mid_stream_ends_cleanly():
    """Out of memory on the first chunk: the request fails as a whole (503, before any
    byte is sent); on a later chunk: the chunks done are delivered, then one error
    that stands for the rest. Either way the worker carries on."""
    async def run(fail_at: int) -> tuple[list, list]:
        """What a job of three garments gets, and then what the next job gets."""
        batcher = make_batcher(FailsAtChunk(fail_at), queue_limit=4)
        batcher.start()
        person = torch.zeros(3, 64, 64)

        async def job_items() -> list:
            job = batcher.submit(GarmentsInputs(person, person, torch.ones(3, 3, 64, 64), 1), deadline())
            try:
                stream = await job.future
            except QueueError as error:
                return [error]
            return [item async for item in stream.chunks()]
        try:
            return await job_items(), await job_items()
        finally:
            await batcher.stop()

    (first,), after = asyncio.run(run(fail_at=0))
    assert isinstance(first, DeviceOutOfMemory)
    assert [item.start for item in after] == [0, 1, 2]
    (done, failure), after = asyncio.run(run(fail_at=1))
    assert done.start == 0 and done.outputs.shape == (1, 3, 64, 64)
    assert isinstance(failure, DeviceOutOfMemory)
    assert [item.start for item in after] == [0, 1, 2]


# -- priorities -------------------------------------------------------------------------------------

def test_batches_take_interactive_work_first_and_fill_with_bulk():
    async def scenario():
        gate = threading.Event()
        engine = StandInEngine(gate=gate)
        batcher = make_batcher(engine, max_batch_size=3)
        batcher.start()
        blocker = batcher.submit(single(0), deadline())  # holds the engine while the rest queues
        await engine_called(engine)
        bulk, interactive = Priority.BULK, Priority.INTERACTIVE  # parsed at the edge: the queue takes the enum
        jobs = [batcher.submit(single(tag), deadline(), priority)
                for tag, priority in [(1, bulk), (2, bulk), (3, interactive), (4, bulk), (5, interactive),
                                      (6, interactive), (7, interactive)]]
        registry = batcher.metrics.registry
        gauges = [registry.get_sample_value("tryon_queue_depth")] + [
            registry.get_sample_value("tryon_queue_pending", {"priority": p}) for p in ("interactive", "bulk")]
        gate.set()
        await asyncio.gather(blocker.future, *(j.future for j in jobs))
        await batcher.stop()
        return engine.calls, gauges

    calls, gauges = asyncio.run(scenario())
    # Interactive 3, 5, 6 first; then interactive 7 filled with the oldest bulk; then the rest of bulk.
    assert calls == [[0], [3, 5, 6], [7, 1, 2], [4]]
    assert gauges == [7, 4, 3]  # waiting while the engine held the first: in all, and by priority


def test_a_garments_job_yields_to_waiting_requests_between_its_chunks():
    async def scenario():
        gate = threading.Event()
        engine = StandInEngine(gate=gate)
        batcher = make_batcher(engine, max_batch_size=2)
        batcher.start()
        catalog = batcher.submit(garments(9, 3), deadline())  # /v1/tryon/batch: bulk by the route's default
        await engine_called(engine)
        shopper = batcher.submit(single(1), deadline(), Priority.INTERACTIVE)
        other_bulk = batcher.submit(single(2), deadline(), Priority.BULK)
        gate.set()
        stream = await catalog.future
        chunks = [chunk async for chunk in stream.chunks()]
        await asyncio.gather(shopper.future, other_bulk.future)
        await batcher.stop()
        return engine.calls, chunks

    calls, chunks = asyncio.run(scenario())
    assert [c.start for c in chunks] == [0, 1, 2]
    # The catalog job's first chunk was running when the shopper came: the shopper waits for
    # that chunk only, and the bulk single behind the job gets its turn before the job's next chunk.
    assert calls[0] == ("g", 9, 0) and calls[1] == [1, 2]
    assert calls[2:] == [("g", 9, 1), ("g", 9, 2)]


class SteppedEngine(StandInEngine):
    """A CPU-like engine whose forward runs in ``steps`` steps (model.engine.Engine.iter_infer)."""
    pausable = True

    def __init__(self, steps: int = 3, **kwargs):
        super().__init__(**kwargs)
        self.steps = steps

    def iter_infer(self, pose, masked_model, cloth):
        tags = [int(t) for t in pose[:, 0, 0, 0]]
        for step in range(self.steps):
            self._call(("step", tags, step), pose.shape[0])
            yield None
        yield cloth


def test_interactive_work_overtakes_a_bulk_batch_between_its_steps():
    async def scenario():
        gate = threading.Event()
        engine = SteppedEngine(gate=gate)
        batcher = make_batcher(engine, max_batch_size=2)
        batcher.start()
        catalog = [batcher.submit(single(tag), deadline(), Priority.BULK) for tag in (1, 2)]
        await engine_called(engine)  # the bulk batch is in its first step
        shopper = batcher.submit(single(7), deadline())
        gate.set()
        results = await asyncio.gather(shopper.future, *(j.future for j in catalog))
        await batcher.stop()
        return engine.calls, results

    calls, results = asyncio.run(scenario())
    # The shopper waited for one step of the bulk batch, not for all three.
    assert calls == [("step", [1, 2], 0), [7], ("step", [1, 2], 1), ("step", [1, 2], 2)]
    assert [int(r.output[0, 0, 0]) for r in results] == [7, 1, 2]


# -- admission control ------------------------------------------------------------------------------

def test_admission_refuses_at_once_what_could_not_finish_in_time():
    async def scenario():
        engine = StandInEngine(seconds_per_item=0.2)
        rate = ServiceRate({1: 0.2, 2: 0.4})
        batcher = make_batcher(engine, max_batch_size=2, rate=rate)
        batcher.start()
        accepted, refused = [], []
        for i in range(8):  # a burst with a 1 s deadline: about 2 batches of 2 fit
            try:
                accepted.append(batcher.submit(single(i), deadline(1.0)))
            except Overloaded as exc:
                refused.append(exc)
        # Bulk work waits behind interactive work, so a bulk request is refused sooner...
        with pytest.raises(Overloaded):
            batcher.submit(single(50), deadline(1.0), Priority.BULK)
        # ...and an interactive request with a longer deadline is still let in.
        late = batcher.submit(single(99), deadline(10.0))
        started = time.perf_counter()
        results = await asyncio.gather(*(j.future for j in accepted + [late]))
        await batcher.stop()
        return accepted, refused, results, time.perf_counter() - started

    accepted, refused, results, elapsed = asyncio.run(scenario())
    assert 1 <= len(accepted) <= 4 and len(refused) == 8 - len(accepted)
    assert len(results) == len(accepted) + 1  # every accepted request was served
    assert all(exc.retry_after_s >= 1 for exc in refused)
    answer = from_queue_error(refused[0])
    assert (answer.status, answer.code) == (503, "overloaded") and int(answer.headers["Retry-After"]) >= 1


def test_a_deadline_shorter_than_the_work_alone_is_the_requests_fault_not_the_load():
    async def scenario():
        batcher = make_batcher(StandInEngine(seconds_per_item=0.2), max_batch_size=2,
                               rate=ServiceRate({1: 0.2, 2: 0.4}))
        with pytest.raises(DeadlineTooShort) as refused:  # an idle queue: no wait would help
            batcher.submit(single(0), deadline(0.05))
        with pytest.raises(DeadlineTooShort):  # 4 garments, 2 a call: 0.8 s of their own
            batcher.submit(garments(1, 4, chunk=2), deadline(0.5))
        return refused.value

    answer = from_queue_error(asyncio.run(scenario()))
    assert (answer.status, answer.code, answer.field) == (422, "timeout_too_short", "timeout")
    assert "Retry-After" not in answer.headers


def test_service_rate_interpolates_and_follows_the_engine():
    rate = ServiceRate({1: 0.1, 4: 0.4})
    assert rate.seconds(2) == pytest.approx(0.2) and rate.seconds(8) == pytest.approx(0.8)
    assert rate.items_seconds(9, 4) == pytest.approx(0.4 * 2 + 0.1)
    for _ in range(20):
        rate.record(1, 0.3)
    assert rate.seconds(1) == pytest.approx(0.3, rel=0.01)


# -- a broken device, and shutdown ------------------------------------------------------------------

def test_a_broken_device_fails_what_it_holds_and_refuses_the_rest():
    async def scenario():
        gate = threading.Event()
        engine = StandInEngine(gate=gate, fail={0: RuntimeError(ILLEGAL_ADDRESS)})
        told = []
        batcher = make_batcher(engine, max_batch_size=2, on_device_failure=told.append)
        batcher.start()
        running = [batcher.submit(single(i), deadline()) for i in range(2)]
        await engine_called(engine)
        queued = batcher.submit(single(3), deadline())
        gate.set()
        outcomes = await asyncio.gather(*(j.future for j in running + [queued]), return_exceptions=True)
        with pytest.raises(DeviceFailed):
            batcher.submit(single(4), deadline())
        await batcher.stop()
        return outcomes, told, engine.calls

    outcomes, told, calls = asyncio.run(scenario())
    assert all(isinstance(o, DeviceFailed) for o in outcomes)
    # The queue's outcome is the model's one exception, which the engine raises at warm-up.
    assert all(isinstance(o, device_errors.DeviceFailed) for o in outcomes)
    assert {from_queue_error(o).code for o in outcomes} == {"device_failed"}
    assert len(told) == 1 and "illegal memory access" in told[0]
    assert calls == [[0, 1]]  # the queued request never reached the broken device


def test_stop_answers_the_running_batch_and_started_garments_jobs():
    async def scenario():
        gate = threading.Event()
        engine = StandInEngine(gate=gate)
        batcher = make_batcher(engine, max_batch_size=2)
        batcher.start()
        catalog = batcher.submit(garments(9, 4), deadline())
        await engine_called(engine)
        gate.set()
        stream = await catalog.future  # its first chunk is out; the rest are to come
        gate.clear()
        await engine_called(engine, 2)
        queued = batcher.submit(single(1), deadline())
        stopping = asyncio.create_task(batcher.stop())  # the engine is mid-chunk, held by the gate
        chunks = [chunk async for chunk in stream.chunks()]
        outcome = await asyncio.gather(queued.future, return_exceptions=True)
        await stopping
        gate.set()
        return chunks, outcome[0]

    chunks, queued_outcome = asyncio.run(asyncio.wait_for(scenario(), 20))
    assert chunks[0].start == 0 and isinstance(chunks[-1], ShuttingDown)
    assert isinstance(queued_outcome, ShuttingDown)
