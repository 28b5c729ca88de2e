"""TRYON_WORKERS=2 under tryon-serve (service/processes/supervisor.py): two front-end processes
feeding one engine process, each front end listening on a socket of its own, the jobs that need a
shared store answered 503 by name, and SIGTERM draining through both. (The API's own checks run
against two front ends too: tests/service/api/routes/test_tryon.py; the RemoteBatcher that links
them, in this process: tests/service/processes/test_remote.py.)"""
from __future__ import annotations

import concurrent.futures
import glob
import os
import time

import httpx
import pytest

from tests.fixtures.service.harness import post_files, running_server, sample_key
from tests.utils.processes import process_tree

TWO_FRONT_ENDS = {"TRYON_WORKERS": "2"}


@pytest.fixture(scope="module")
def server(tmp_path_factory, standin_weights_file):
    env = TWO_FRONT_ENDS | {"TRYON_WEIGHTS": str(standin_weights_file), "TRYON_MAX_BATCH_SIZE": "1"}
    with running_server(env, tmp_path_factory.mktemp("logs")) as proc:
        yield proc


def test_the_front_ends_are_separate_processes(server):
    assert len(process_tree(server.process.pid)) == 3  # the engine process and two front ends


def test_without_a_shared_job_store_jobs_are_unavailable_and_everything_else_serves(server):
    """Embedded jobs would be one store per front end: the service starts, /v1/jobs says why it is not
    served (503 without Retry-After: waiting will not help), /readyz says so, and the log says it once."""
    answer = httpx.post(f"{server.url}/v1/jobs", files={"cloth": ("c.png", b"x", "image/png")}, timeout=10)
    assert answer.status_code == 503 and "retry-after" not in answer.headers
    assert answer.json()["error"]["code"] == "jobs_unavailable" and "TRYON_JOBS_URL" in answer.json()["error"]["message"]
    assert httpx.get(f"{server.url}/v1/jobs/job_{'x' * 32}", timeout=10).json()["error"]["code"] == "jobs_unavailable"
    jobs = httpx.get(f"{server.url}/readyz", timeout=10).json()["jobs"]
    assert jobs["available"] is False and "TRYON_JOBS_URL" in jobs["reason"]
    assert server.stderr.count("/v1/jobs answers 503 jobs_unavailable: catalog jobs need TRYON_JOBS_URL") == 1


def listening_sockets(port: int) -> set[str]:
    """The inodes of the TCP sockets listening on ``port`` (/proc/net/tcp, IPv4)."""
    found = set()
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "0A":  # 0A: LISTEN
            found.add(fields[9])
    return found


def socket_inodes(pid: int) -> set[str]:
    found = set()
    for fd in glob.glob(f"/proc/{pid}/fd/*"):
        try:
            link = os.readlink(fd)
        except FileNotFoundError:  # closed since the listing (the detector warming up opens and closes files)
            continue
        if link.startswith("socket:["):
            found.add(link[len("socket:["):-1])
    return found


def test_each_front_end_listens_on_a_socket_of_its_own(server):
    """SO_REUSEPORT: Linux spreads new connections over the front ends' sockets. (On one shared
    socket, the front end that woke first accepted every waiting connection at once.)"""
    engine, *front_ends = process_tree(server.process.pid)
    listening = listening_sockets(server.port)
    held = [socket_inodes(pid) & listening for pid in front_ends]
    assert len(listening) == 2 and all(len(inodes) == 1 for inodes in held) and held[0] != held[1]
    assert not socket_inodes(engine) & listening


def test_sigterm_drains_through_both_front_ends(tmp_path, standin_weights_file):
    in_flight = 6
    # A batch window long enough for all six to queue through two front ends on a loaded machine (at 1.5 s
    # the window closed before the last arrived), and deadlines that outlast a batch of six run there (20 s).
    env = TWO_FRONT_ENDS | {"TRYON_WEIGHTS": str(standin_weights_file), "TRYON_MAX_BATCH_SIZE": "8",
                            "TRYON_MAX_BATCH_WAIT_MS": "5000", "TRYON_DRAIN_TIMEOUT_S": "60",
                            "TRYON_REQUEST_TIMEOUT_S": "120"}
    with running_server(env, tmp_path) as server:
        with httpx.Client(base_url=server.url, timeout=180) as client, \
                concurrent.futures.ThreadPoolExecutor(in_flight) as pool:
            pending = [pool.submit(post_files, client) for _ in range(in_flight)]
            end = time.monotonic() + 60
            while server.metrics().get(sample_key("tryon_queue_depth"), 0) < in_flight:  # all queued, none run
                assert time.monotonic() < end
                time.sleep(0.02)
            server.process.terminate()
            answers = [p.result() for p in pending]
        assert [a.status_code for a in answers] == [200] * in_flight
        assert all(a.content[:3] == b"\xff\xd8\xff" for a in answers)
    log = server.stderr
    assert log.count("draining: readiness is now 503") == 3  # the engine process and each front end
