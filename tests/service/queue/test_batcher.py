"""The scheduler in-process, with engine stand-ins that play a GPU (none runs here):
priorities, admission control, out-of-memory splits, a device that breaks, and
shutdown answering everything it holds. Then through a real server (the last section):
a full queue answers 503 at once, a passed deadline 504, a client that leaves while
queued is never run, a body that stalls is answered at the request's deadline."""
from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import threading
import time

import httpx
import pytest
import torch

from model import device_errors
from model.device_errors import device_failure, is_out_of_memory
from model.images import Letterbox, TryOnInputs
from service.queue.admission import ServiceRate
from service.queue.batcher import Batcher
from service.queue.work import GarmentsInputs
from service.queue.splitting import infer_splitting_on_oom
from service.api.errors import from_queue_error
from service.metrics import Metrics
from service.queue.outcomes import (DeadlineTooShort, DeviceFailed, DeviceOutOfMemory, Overloaded, QueueError,
                                    ShuttingDown)
from service.queue.priority import Priority
from tests.fixtures.service.harness import fixture_bytes, running_server, sample_key
from tests.fixtures.standin_engine import StandInEngine

# Admission control times the engine while the server of the last section starts and refuses a request whose
# estimate passes its deadline: a neighbour's busy test must not slow that timing (make test).
pytestmark = pytest.mark.alone

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


async def engine_called(engine: StandInEngine, times: int = 1, timeout: float = 10) -> None:
    """Returns once the engine has been called ``times`` times (it may still be held by its gate)."""
    end = asyncio.get_running_loop().time() + timeout
    while len(engine.calls) < times:
        assert asyncio.get_running_loop().time() < end, f"the engine was not called {times} times"
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
        works = [batcher.submit(single(i), deadline()) for i in range(5)]
        results = await asyncio.gather(*(j.future for j in works), return_exceptions=True)
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
    """Runs out of memory once, at chunk ``fail_at`` of a garments ``Work``."""

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
        """What a ``Work`` of three garments gets, and then what the next one gets."""
        batcher = make_batcher(FailsAtChunk(fail_at), queue_limit=4)
        batcher.start()
        person = torch.zeros(3, 64, 64)

        async def job_items() -> list:
            work = batcher.submit(GarmentsInputs(person, person, torch.ones(3, 3, 64, 64), 1), deadline())
            try:
                stream = await work.future
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
        works = [batcher.submit(single(tag), deadline(), priority)
                 for tag, priority in [(1, bulk), (2, bulk), (3, interactive), (4, bulk), (5, interactive),
                                       (6, interactive), (7, interactive)]]
        registry = batcher.metrics.registry
        gauges = [registry.get_sample_value("tryon_queue_depth")] + [
            registry.get_sample_value("tryon_queue_pending", {"priority": p}) for p in ("interactive", "bulk")]
        gate.set()
        await asyncio.gather(blocker.future, *(j.future for j in works))
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
    # The garments ``Work``'s first chunk was running when the shopper came: the shopper waits for
    # that chunk only, and the bulk single behind the work gets its turn before the work's next chunk.
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


# -- through a real server ------------------------------------------------------------------------

IMAGES = {name: fixture_bytes(f"{name}_64x64.png") for name in ("masked_model", "pose", "cloth")}
FILES = {name: (f"{name}.png", data, "image/png") for name, data in IMAGES.items()}
WINDOW_S = 4.0  # the batch wait: a lone request sits queued this long
TIMEOUT_S = 2.5  # the request deadline, shorter than the window, far longer than a 64x64 forward


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A queue of one that never fills a batch: requests wait the whole window, deterministically.
    64x64: a forward costs far less than the deadline, so admission control lets requests in."""
    with running_server({"TRYON_MAX_BATCH_SIZE": "2", "TRYON_QUEUE_LIMIT": "1", "TRYON_IMAGE_SIZE": "64x64",
                         "TRYON_MAX_BATCH_WAIT_MS": str(WINDOW_S * 1000), "TRYON_REQUEST_TIMEOUT_S": str(TIMEOUT_S)},
                        tmp_path_factory.mktemp("logs")) as proc:
        yield proc


ANSWERED_499 = {"route": "/v1/tryon", "method": "POST", "status": "499"}  # the client went before its answer
ANSWERED_500 = {"route": "/v1/tryon", "method": "POST", "status": "500"}


def wait_queue_depth(server, depth: int, timeout: float = 5) -> None:
    end = time.monotonic() + timeout
    while server.metrics()[sample_key("tryon_queue_depth")] != depth:
        assert time.monotonic() < end, f"queue depth never reached {depth}"
        time.sleep(0.02)


def engine_runs(server) -> float:
    return server.metrics().get(sample_key("tryon_batch_size_sum"), 0.0)


def test_full_queue_answers_503_at_once_and_deadline_504(server):
    wait_queue_depth(server, 0)
    runs = engine_runs(server)
    dropped = server.metrics().get(sample_key("tryon_dropped_total", {"reason": "deadline"}), 0.0)
    rejected = {reason: server.metrics().get(sample_key("tryon_rejected_total", {"reason": reason}), 0.0)
                for reason in ("queue_full", "deadline_exceeded")}
    with httpx.Client(base_url=server.url, timeout=10) as client, \
            concurrent.futures.ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.post, "/v1/tryon", files=FILES)
        wait_queue_depth(server, 1)
        second = client.post("/v1/tryon", files=FILES)
        assert not first.done()  # at once: refused while the first still waits in the queue
        assert second.status_code == 503
        assert second.json()["error"]["code"] == "queue_full" and second.headers["retry-after"] == "1"
        late = first.result()
        assert late.status_code == 504 and late.json()["error"]["code"] == "deadline_exceeded"
        # Answered at its deadline, before the window closed: the worker has not dropped it yet.
        assert server.metrics().get(sample_key("tryon_dropped_total", {"reason": "deadline"}), 0.0) == dropped
    # The worker drops the expired request when its window closes; the engine never sees it.
    assert server.wait_metric("tryon_dropped_total", {"reason": "deadline"}, dropped + 1) == dropped + 1
    assert engine_runs(server) == runs
    metrics = server.metrics()
    for reason, before in rejected.items():
        assert metrics[sample_key("tryon_rejected_total", {"reason": reason})] == before + 1, reason


def test_client_gone_while_queued_is_not_run(server):
    wait_queue_depth(server, 0)
    runs = engine_runs(server)
    gone = server.metrics().get(sample_key("tryon_dropped_total", {"reason": "client_gone"}), 0.0)
    answered_499 = server.metrics().get(sample_key("tryon_http_requests_total", ANSWERED_499), 0.0)
    request = httpx.Request("POST", f"{server.url}/v1/tryon", files=FILES)
    body = request.read()
    head = f"POST /v1/tryon HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {request.headers['content-type']}\r\n" \
           f"Content-Length: {len(body)}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(head.encode() + body)
        wait_queue_depth(server, 1)
    # Closed well before the deadline: the worker must drop it as gone, not run it.
    assert server.wait_metric("tryon_dropped_total", {"reason": "client_gone"}, gone + 1) == gone + 1
    assert engine_runs(server) == runs
    assert server.wait_metric("tryon_http_requests_total", ANSWERED_499, answered_499 + 1) == answered_499 + 1


def test_a_body_that_stalls_is_408_and_one_that_breaks_off_is_no_500(server):
    """Hostile uploads: half a body then silence is answered once the request's time
    is up (not held open for ever); half a body then a hang-up is counted as gone."""
    head = (b"POST /v1/tryon HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{\"cloth\": ")
    answered_500 = server.metrics().get(sample_key("tryon_http_requests_total", ANSWERED_500), 0.0)
    # Not held open for ever: the socket gives up 10 s after the request's deadline, the server must answer first.
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT_S + 10) as stalled:
        stalled.sendall(head)
        answer = b""
        while not answer.endswith(b"}}"):  # the head and the JSON body may come in two reads
            answer += stalled.recv(4096) or b"}}"
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b'"code":"body_timeout"' in answer
    answered_499 = server.metrics().get(sample_key("tryon_http_requests_total", ANSWERED_499), 0.0)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as gone:
        gone.sendall(head)
    assert server.wait_metric("tryon_http_requests_total", ANSWERED_499, answered_499 + 1) == answered_499 + 1
    assert server.metrics().get(sample_key("tryon_http_requests_total", ANSWERED_500), 0.0) == answered_500
