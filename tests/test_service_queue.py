"""Admission and dropping: a full queue answers 503 at once, a passed deadline
504, a client that leaves while queued is never run; and the out-of-memory
split, where a small engine stand-in plays a GPU (none runs here)."""
from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import time

import httpx
import pytest
import torch

from model.images import Letterbox, TryOnInputs
from service.batcher import Batcher, infer_splitting_on_oom
from service.errors import ApiError
from service.metrics import Metrics
from tests.fixtures.service.harness import fixture_bytes, running_server, sample_key

IMAGES = {name: fixture_bytes(f"{name}_64x64.png") for name in ("masked_model", "pose", "cloth")}
FILES = {name: (f"{name}.png", data, "image/png") for name, data in IMAGES.items()}
WINDOW_S = 2.0  # the batch wait: a lone request sits queued this long
TIMEOUT_S = 1.0  # the request deadline, shorter than the window


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A queue of one that never fills a batch: requests wait the whole window, deterministically."""
    with running_server({"TRYON_MAX_BATCH_SIZE": "2", "TRYON_QUEUE_LIMIT": "1",
                         "TRYON_MAX_BATCH_WAIT_MS": str(WINDOW_S * 1000), "TRYON_REQUEST_TIMEOUT_S": str(TIMEOUT_S)},
                        tmp_path_factory.mktemp("logs")) as proc:
        yield proc


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
    with httpx.Client(base_url=server.url, timeout=10) as client, \
            concurrent.futures.ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        first = pool.submit(client.post, "/v1/tryon", files=FILES)
        wait_queue_depth(server, 1)
        t0 = time.monotonic()
        second = client.post("/v1/tryon", files=FILES)
        assert second.status_code == 503 and time.monotonic() - t0 < 0.5
        assert second.json()["error"]["code"] == "queue_full" and second.headers["retry-after"] == "1"
        late = first.result()
        assert late.status_code == 504 and late.json()["error"]["code"] == "deadline_exceeded"
        assert TIMEOUT_S - 0.05 < time.monotonic() - started < WINDOW_S
    # The worker drops the expired request when its window closes; the engine never sees it.
    assert server.wait_metric("tryon_dropped_total", {"reason": "deadline"}, dropped + 1) == dropped + 1
    assert engine_runs(server) == runs
    text = httpx.get(f"{server.url}/metrics").text
    assert 'tryon_rejected_total{reason="queue_full"}' in text
    assert 'tryon_rejected_total{reason="deadline_exceeded"}' in text


def test_client_gone_while_queued_is_not_run(server):
    wait_queue_depth(server, 0)
    runs = engine_runs(server)
    gone = server.metrics().get(sample_key("tryon_dropped_total", {"reason": "client_gone"}), 0.0)
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
    assert server.metrics()[sample_key("tryon_http_requests_total",
                                       {"route": "/v1/tryon", "method": "POST", "status": "499"})] >= 1


class OomAboveEngine:
    """Stands in for a GPU engine: raises CUDA out-of-memory for batches above ``limit``."""

    def __init__(self, limit: int):
        self.limit = limit
        self.calls: list[int] = []

    def infer(self, pose, masked_model, cloth):
        self.calls.append(pose.shape[0])
        if pose.shape[0] > self.limit:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (batch {pose.shape[0]})")
        return pose + 2 * masked_model - cloth


def _inputs(i: int) -> TryOnInputs:
    gen = torch.Generator().manual_seed(i)
    pose, masked, cloth = (torch.rand(3, 8, 8, generator=gen) for _ in range(3))
    return TryOnInputs(masked_model=masked, pose=pose, cloth=cloth, person_frame=Letterbox((8, 8), (8, 8)))


def test_oom_split_keeps_every_item():
    engine = OomAboveEngine(limit=2)
    items = [_inputs(i) for i in range(7)]
    stack = {n: torch.stack([getattr(x, n) for x in items]) for n in ("pose", "masked_model", "cloth")}
    splits = []
    outputs = infer_splitting_on_oom(engine.infer, stack["pose"], stack["masked_model"], stack["cloth"],
                                     splits.append)
    assert len(outputs) == 7
    for item, out in zip(items, outputs):
        assert torch.equal(out, item.pose + 2 * item.masked_model - item.cloth)
    assert engine.calls == [7, 4, 2, 2, 3, 2, 1]  # halves until each part fits
    assert splits == [7, 4, 3]


def test_batcher_splits_on_oom_and_loses_no_request():
    async def scenario(limit: int):
        metrics = Metrics(max_batch_size=8)
        engine = OomAboveEngine(limit)
        batcher = Batcher(engine, max_batch_size=8, max_wait_s=0.05, queue_limit=16, metrics=metrics)
        batcher.start()
        loop = asyncio.get_running_loop()
        jobs = [batcher.submit(_inputs(i), loop.time() + 10) for i in range(5)]
        results = await asyncio.gather(*(j.future for j in jobs), return_exceptions=True)
        await batcher.stop()
        return results, engine, metrics

    results, engine, metrics = asyncio.run(scenario(limit=2))
    assert engine.calls == [5, 3, 2, 1, 2]  # one batch formed, then split: 5 -> 3 -> (2, 1), 2
    for i, result in enumerate(results):
        item = _inputs(i)
        assert torch.equal(result.output, item.pose + 2 * item.masked_model - item.cloth)
        assert result.batch_size == 5
    assert metrics.oom_splits._value.get() == 2
    # Out of memory even for one item: each request gets its own 503, none hangs or vanishes.
    results, _, _ = asyncio.run(scenario(limit=0))
    assert all(isinstance(r, ApiError) and r.status == 503 and r.code == "out_of_memory" for r in results)


def test_a_body_that_stalls_is_408_and_one_that_breaks_off_is_no_500(server):
    """Hostile uploads: half a body then silence is answered once the request's time
    is up (not held open for ever); half a body then a hang-up is counted as gone."""
    head = (b"POST /v1/tryon HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{\"cloth\": ")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as stalled:
        started = time.monotonic()
        stalled.sendall(head)
        answer = b""
        while not answer.endswith(b"}}"):  # the head and the JSON body may come in two reads
            answer += stalled.recv(4096) or b"}}"
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b'"code":"body_timeout"' in answer and time.monotonic() - started < TIMEOUT_S + 5
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as gone:
        gone.sendall(head)
    assert server.wait_metric("tryon_http_requests_total", {"route": "/v1/tryon", "method": "POST", "status": "499"},
                              1) >= 1
    assert server.metrics().get(sample_key("tryon_http_requests_total", {"route": "/v1/tryon", "method": "POST",
                                                                         "status": "500"}), 0) == 0
