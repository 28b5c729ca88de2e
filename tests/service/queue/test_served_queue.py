"""The queue through a real server: a full queue answers 503 at once, a passed
deadline 504, a client that leaves while queued is never run. The scheduler's
own rules are tested in-process in tests/service/queue/test_batcher.py."""
from __future__ import annotations

import concurrent.futures
import socket
import time

import httpx
import pytest

from tests.fixtures.service.harness import fixture_bytes, running_server, sample_key

# Admission control times the engine while the server starts and refuses a request whose
# estimate passes its deadline: a neighbour's busy test must not slow that timing (make test).
pytestmark = pytest.mark.alone

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
