"""Real replicas behind the project's own nginx config; one goes away mid-stream.

No Docker engine: the replicas are ``python -m service`` subprocesses (CPU,
64x64, stand-in weights) on free 127.0.0.1 ports, and nginx is Debian's binary
running from a scratch directory with the config docker/render_nginx.py renders
for docker compose, pointed at those ports. A bounded stream of concurrent
multipart try-on requests goes through nginx while one replica gets SIGTERM
(it drains: no request may fail) or SIGKILL (requests it held die with it:
nginx must retry each on the survivor, so the shopper still gets an image).
Beside it, gRPC calls (tritonclient.grpc's ModelInfer) go through nginx's gRPC
server: nginx sends a call again only when it never reached a replica
(docs/deploy.md), so the only calls that may fail are ones a killed replica held.
"""
from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from PIL import Image
from tritonclient.utils import InferenceServerException

from tests.utils import REPO

sys.path.insert(0, str(REPO / "docker"))

import render_nginx  # noqa: E402

from tests.fixtures.service.probe import ServerExited, wait_until_ok  # noqa: E402
from tests.fixtures.service.harness import ServerProcess, free_port, stop_process  # noqa: E402
from tests.utils.installed import skip_missing  # noqa: E402

# alone: four replicas start at once and a drain is timed; under make test's two workers,
# no other module's servers start or time their engines meanwhile (tests/conftest.py). The timeout:
# a test's share of starting four replicas of three processes (TRYON_WORKERS=2).
pytestmark = [pytest.mark.timeout(360), pytest.mark.alone]

REQUESTS = 40
CONCURRENCY = 6
SIGNAL_AFTER = 12          # responses received before the victim is signalled
DRAIN_TIMEOUT_S = 15
STARTUP_TIMEOUT_S = 60
GRPC_CONCURRENCY = 1      # gRPC calls at once beside the HTTP stream, for as long as it runs
GRPC_PATH = "/inference.GRPCInferenceService/ModelInfer"
# Small, so a burst overflows it, yet a survivor alone always holds the whole stream:
# even with a batch of one running, the HTTP and gRPC streams' requests fit in the queue.
QUEUE_LIMIT = CONCURRENCY + GRPC_CONCURRENCY
BURST = 48
# Which replica each stopping test stops, and the ones never stopped (the tests that need two
# healthy replicas use these): a test's outcome does not depend on which ran before it.
VICTIMS = {"SIGTERM": 0, "SIGKILL": 2}
SURVIVORS = (1, 3)
OUTPUT_SIZE = (64, 64)     # the model's resolution (TRYON_IMAGE_SIZE), as JPEG by default

ACCESS_LINE = re.compile(r't=(?P<time>[\d.]+) "(?P<method>\S+) (?P<path>\S+) [^"]*" (?P<status>\d{3}) \S+ '
                         r'rt=(?P<rt>[\d.]+) ua="(?P<upstreams>[^"]*)" us="(?P<statuses>[^"]*)" .*rid=(?P<rid>\S+)')


# Nothing listens here: an image URL on it fails, and the replica answers 502 itself.
CLOSED_PORT = free_port()
# A long request deadline: each replica times its engine while three others start beside it, and
# admission control should not refuse as "overloaded" on that start-up estimate (these tests are of
# nginx's rules; tests/service/queue tests admission).
REPLICA_ENV = {"TRYON_DEVICE": "cpu", "TRYON_MAX_BATCH_SIZE": "4", "TRYON_DRAIN_TIMEOUT_S": str(DRAIN_TIMEOUT_S),
               "TRYON_REQUEST_TIMEOUT_S": "120",
               "TRYON_URL_ALLOW_HOSTS": f"127.0.0.1:{CLOSED_PORT}", "TRYON_QUEUE_LIMIT": str(QUEUE_LIMIT)}


def tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def wait_for(url: str, process: subprocess.Popen, log: Path, timeout: float = STARTUP_TIMEOUT_S) -> None:
    try:
        wait_until_ok(url, process, timeout)
    except (ServerExited, TimeoutError) as exc:
        raise AssertionError(f"{exc}:\n{tail(log)}") from None


@dataclass
class Nginx:
    port: int
    process: subprocess.Popen
    prefix: Path

    grpc_port: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(cls, binary: str, prefix: Path, upstreams: list[str], **render_args) -> Nginx:
        port, grpc_port = free_port(), free_port()
        conf = render_nginx.write_scratch(prefix, upstreams, f"127.0.0.1:{port}", worker_processes=1,
                                          grpc_listen=f"127.0.0.1:{grpc_port}", **render_args)
        with open(prefix / "stderr.log", "wb") as err:
            process = subprocess.Popen(render_nginx.nginx_command(binary, conf), stdout=subprocess.DEVNULL,
                                       stderr=err)
        nginx = cls(port, process, prefix, grpc_port if render_args.get("grpc_upstreams") else None)
        wait_for(f"{nginx.url}/lb/healthz", process, prefix / "stderr.log", timeout=10)
        return nginx

    def tryons(self, expected: int) -> list[dict]:
        """The logged try-ons once all ``expected`` are in: nginx writes a line just
        after it has sent the response, so the last ones may lag the client a little."""
        deadline = time.monotonic() + 5
        while True:
            entries = [e for e in self.access_log() if e["path"].startswith("/v1/tryon")]
            if len(entries) >= expected or time.monotonic() > deadline:
                return entries
            time.sleep(0.05)

    def calls(self, expected: int) -> list[dict]:
        """The logged gRPC calls once all ``expected`` are in (as ``tryons``)."""
        deadline = time.monotonic() + 5
        while True:
            entries = [e for e in self.access_log() if e["path"] == GRPC_PATH]
            if len(entries) >= expected or time.monotonic() > deadline:
                return entries
            time.sleep(0.05)

    def access_log(self) -> list[dict]:
        """The proxied requests, oldest first, with the replica(s) each went to."""
        entries = []
        for line in (self.prefix / "logs" / "access.log").read_text().splitlines():
            match = ACCESS_LINE.search(line)
            if match:
                entry = match.groupdict()
                entry["time"], entry["rt"] = float(entry["time"]), float(entry["rt"])
                entry["upstreams"] = [a.strip() for a in re.split(r"[,:] (?=\d)", entry["upstreams"])
                                      if a.strip()] if entry["upstreams"] != "-" else []
                entries.append(entry)
        return entries


@dataclass
class Outcome:
    status: int | None
    image_format: str = ""
    image_size: tuple[int, int] = (0, 0)
    error: str = ""
    request_id: str = ""


@dataclass
class StreamResult:
    outcomes: list[Outcome] = field(default_factory=list)
    signalled_at: float = 0.0  # wall clock, as in nginx's log
    calls: list[str] = field(default_factory=list)  # each gRPC call's status: "OK" or tritonclient's "StatusCode.X"


def png(seed: int, size=(72, 96)) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def nginx_binary():
    binary = render_nginx.nginx_binary()
    if binary is None:
        skip_missing("nginx", "apt-get install nginx; .ci/run does this")
    probe = subprocess.run([binary, "-v"], capture_output=True, text=True)
    if probe.returncode != 0:
        skip_missing("nginx", f"{binary} cannot run here: {probe.stderr.strip()}")
    return binary


@pytest.fixture(scope="module")
def images() -> dict[str, tuple[str, bytes, str]]:
    """The three inputs of a try-on as multipart file fields."""
    return {name: (f"{name}.png", png(seed), "image/png")
            for seed, name in enumerate(("masked_model", "pose", "cloth"))}


@pytest.fixture(scope="module", params=[1, 2], ids=["one-process", "two-front-ends"])
def front_ends(request) -> int:
    """Every replica one process, then TRYON_WORKERS=2: one engine process and two front ends,
    which SIGTERM drains all together and SIGKILL of the engine process takes down together."""
    return request.param


@pytest.fixture(scope="module")
def replicas(tmp_path_factory, standin_weights_file, nginx_binary, front_ends):
    """Four ready replicas, started together: each test that stops one has its own victim
    (VICTIMS), and the others use replicas no test stops (SURVIVORS), so any order works."""
    workdir = tmp_path_factory.mktemp("replicas")
    env = REPLICA_ENV | {"TRYON_WEIGHTS": str(standin_weights_file), "TRYON_WORKERS": str(front_ends)}
    started = []
    for _ in range(4):
        grpc_port = free_port()
        started.append(ServerProcess(env | {"TRYON_GRPC_PORT": str(grpc_port)}, workdir))
        started[-1].grpc_address = f"127.0.0.1:{grpc_port}"
    try:
        for replica in started:
            # Four replicas of three processes each start on a shared CPU: more time than one process needs.
            replica.wait_ready(STARTUP_TIMEOUT_S * (4 if front_ends > 1 else 1))
        yield started
    finally:
        for replica in started:
            replica.stop(signal.SIGKILL)


@contextmanager
def load_balancer(binary: str, prefix: Path, upstreams: list[str], **render_args):
    """nginx in front of ``upstreams`` (fresh, so no failure state carries over); stopped afterwards."""
    nginx = Nginx.start(binary, prefix, upstreams, **render_args)
    try:
        yield nginx
    finally:
        stop_process(nginx.process, signal.SIGQUIT, 20)


def grpc_inputs() -> list:
    rng = np.random.default_rng(0)
    inputs = []
    for name in ("masked_model", "pose", "cloth"):
        tensor = triton.InferInput(name, [1, *OUTPUT_SIZE[::-1], 3], "UINT8")
        tensor.set_data_from_numpy(rng.integers(0, 256, (1, *OUTPUT_SIZE[::-1], 3), dtype=np.uint8))
        inputs.append(tensor)
    return inputs


def grpc_stream(address: str, stop: threading.Event, statuses: list[str]) -> None:
    """ModelInfer through nginx, one call after another, until ``stop``; each call's status."""
    inputs = grpc_inputs()
    with triton.InferenceServerClient(address) as client:
        while not stop.is_set():
            try:
                result = client.infer("daflow", inputs, client_timeout=30)
                assert result.as_numpy("tryon").shape == (1, *OUTPUT_SIZE[::-1], 3)
                statuses.append("OK")
            except InferenceServerException as exc:
                statuses.append(f"{exc.status()} {exc.message()}")


def drive(nginx: Nginx, images: dict, victim: ServerProcess, sig: int) -> StreamResult:
    """REQUESTS try-ons, CONCURRENCY at a time, and gRPC calls GRPC_CONCURRENCY at a time while they
    run; ``sig`` reaches the victim after SIGNAL_AFTER answers."""
    result = StreamResult()
    url = nginx.url
    stop = threading.Event()
    callers = [threading.Thread(target=grpc_stream, args=(f"127.0.0.1:{nginx.grpc_port}", stop, result.calls))
               for _ in range(GRPC_CONCURRENCY)]
    for caller in callers:
        caller.start()

    def one(client: httpx.Client) -> Outcome:
        try:
            response = client.post(f"{url}/v1/tryon", files=images)
            if response.status_code != 200:
                return Outcome(response.status_code, error=response.text[:200])
            with Image.open(io.BytesIO(response.content)) as picture:
                return Outcome(200, picture.format, picture.size, request_id=response.headers["x-request-id"])
        except httpx.HTTPError as exc:
            return Outcome(None, error=f"{type(exc).__name__}: {exc}")

    with httpx.Client(timeout=30) as client, ThreadPoolExecutor(CONCURRENCY) as pool:
        futures = [pool.submit(one, client) for _ in range(REQUESTS)]
        for future in as_completed(futures):
            result.outcomes.append(future.result())
            if len(result.outcomes) == SIGNAL_AFTER:
                # The pool has just sent its next requests: let nginx hand some to the victim.
                time.sleep(0.05)
                result.signalled_at = time.time()
                victim.process.send_signal(sig)
    stop.set()
    for caller in callers:
        caller.join(60)
    return result


def check_calls(result: StreamResult, nginx: Nginx, victim: ServerProcess) -> list[dict]:
    """nginx's rule for gRPC (docs/deploy.md): a call that met a dead replica before it was sent is
    sent to another; one the victim held when it went fails with UNAVAILABLE, and no other call fails."""
    calls = nginx.calls(len(result.calls))
    assert len(calls) == len(result.calls) > 0, "nginx logged a different number of gRPC calls than were made"
    failed = [c for c in calls if c["statuses"].split(", ")[-1] != "200"]
    for entry in failed:
        assert entry["upstreams"] == [victim.grpc_address], f"a failed call was not the victim's alone: {entry}"
        # (nginx's times are in ms: a call sent just before the signal may read up to 1 ms later)
        assert entry["time"] - entry["rt"] <= result.signalled_at + 0.002, f"a call sent after the signal failed: {entry}"
    refused = [status for status in result.calls if status != "OK"]
    assert len(refused) == len(failed), (refused, failed)
    assert all(status.startswith("StatusCode.UNAVAILABLE ") for status in refused), refused
    return calls


def check_stream(result: StreamResult, nginx: Nginx) -> list[dict]:
    failures = [o for o in result.outcomes if (o.status, o.image_format, o.image_size) != (200, "JPEG", OUTPUT_SIZE)]
    assert len(result.outcomes) == REQUESTS
    assert not failures, f"{len(failures)} of {REQUESTS} requests failed: {failures[:3]}"
    tryons = nginx.tryons(REQUESTS)
    assert len(tryons) == REQUESTS, "nginx logged a different number of try-ons than were sent"
    # nginx mints the request id and the replica answers with it: one id in both logs.
    assert {o.request_id for o in result.outcomes} == {e["rid"] for e in tryons}
    return tryons


def report(name: str, result: StreamResult, tryons: list[dict], survivor: ServerProcess, victim: ServerProcess,
           calls: list[dict]) -> dict:
    retried = [e for e in tryons if len(e["upstreams"]) > 1]
    numbers = {"finished_by_victim_after_signal": sum(e["upstreams"][-1] == victim.address
                                                      and e["time"] > result.signalled_at for e in tryons),
               "sent": len(tryons), "failed": sum(e["status"] != "200" for e in tryons), "retried": len(retried),
               "retry_statuses": sorted({e["statuses"] for e in retried}),
               "served_by_victim": sum(e["upstreams"][-1] == victim.address for e in tryons),
               "served_by_survivor": sum(e["upstreams"][-1] == survivor.address for e in tryons),
               "grpc_calls": len(calls), "grpc_failed": sum(s != "OK" for s in result.calls),
               "grpc_retried": sum(len(c["upstreams"]) > 1 for c in calls),
               "grpc_by_victim": sum(c["upstreams"][-1] == victim.grpc_address for c in calls)}
    print(f"\n{name}: {numbers}")
    return numbers


def test_a_replicas_own_502_is_passed_on_not_retried(replicas, nginx_binary, tmp_path, images):
    """The service answers 502 for an image URL that failed: the client's input, not a sick
    replica. nginx must not retry it, nor count it against the replica."""
    pair = [replicas[i].address for i in SURVIVORS]
    with load_balancer(nginx_binary, tmp_path, pair) as nginx:
        fields = {"cloth": f"http://127.0.0.1:{CLOSED_PORT}/cloth.png"}
        files = {name: part for name, part in images.items() if name != "cloth"}
        answers = [httpx.post(f"{nginx.url}/v1/tryon", files=files, data=fields, timeout=30) for _ in range(4)]
        assert {a.status_code for a in answers} == {502}
        assert {a.json()["error"]["field"] for a in answers} == {"cloth"}
        assert all(len(e["upstreams"]) == 1 for e in nginx.tryons(4)), "a 502 from a replica was retried"
        # Four 502s in a row rested no replica: both still get work.
        served = {httpx.post(f"{nginx.url}/v1/tryon", files=images, timeout=30).status_code for _ in range(4)}
        assert served == {200}
        assert {e["upstreams"][-1] for e in nginx.tryons(8)[4:]} == set(pair)


def test_a_burst_beyond_the_queues_rests_no_replica(replicas, nginx_binary, tmp_path, images):
    """Full queues answer 503 queue_full, passed on with Retry-After; they are not
    counted as failures, so the moment the burst is over both replicas take work again."""
    pair = [replicas[i].address for i in SURVIVORS]
    with load_balancer(nginx_binary, tmp_path, pair) as nginx:
        with httpx.Client(timeout=30) as client, ThreadPoolExecutor(BURST) as pool:
            burst = list(pool.map(lambda _: client.post(f"{nginx.url}/v1/tryon", files=images), range(BURST)))
        rejected = [a for a in burst if a.status_code != 200]
        print(f"\nburst: {BURST} at once, {len(rejected)} rejected")
        assert rejected, "the burst did not fill the queues: nothing was tested"
        assert {(a.status_code, a.json()["error"]["code"]) for a in rejected} == {(503, "queue_full")}
        assert all(a.headers["retry-after"] for a in rejected)
        after = [httpx.post(f"{nginx.url}/v1/tryon", files=images, timeout=30).status_code for _ in range(4)]
        assert after == [200] * 4
        assert {e["upstreams"][-1] for e in nginx.tryons(BURST + 4)[-4:]} == set(pair)


def test_sigterm_drains_without_a_failed_request(replicas, nginx_binary, tmp_path, images):
    victim, survivor = replicas[VICTIMS["SIGTERM"]], replicas[SURVIVORS[0]]
    with load_balancer(nginx_binary, tmp_path, [victim.address, survivor.address],
                       grpc_upstreams=[victim.grpc_address, survivor.grpc_address]) as nginx:
        result = drive(nginx, images, victim, signal.SIGTERM)
        tryons = check_stream(result, nginx)
        calls = check_calls(result, nginx, victim)
        code = victim.process.wait(DRAIN_TIMEOUT_S + 5)
        assert_survivor_serves(nginx, images, survivor)

    numbers = report("SIGTERM", result, tryons, survivor, victim, calls)
    # A draining replica finishes the calls it holds and takes no new ones: none fails.
    assert result.calls.count("OK") == len(result.calls), result.calls
    # The victim had work in hand when SIGTERM came, and finished it.
    assert numbers["finished_by_victim_after_signal"] > 0
    assert numbers["served_by_victim"] + numbers["served_by_survivor"] == REQUESTS
    # The drain ends in a clean exit (the contract: status 0) within TRYON_DRAIN_TIMEOUT_S.
    assert code == 0, (f"drained replica ended with {code}, not 0 (a negative code is death by that "
                       f"signal: uvicorn re-raises a captured SIGTERM after its shutdown):\n{victim.stderr[-3000:]}")


def test_sigkill_is_retried_on_the_survivor(replicas, nginx_binary, tmp_path, images):
    victim, survivor = replicas[VICTIMS["SIGKILL"]], replicas[SURVIVORS[1]]
    with load_balancer(nginx_binary, tmp_path, [victim.address, survivor.address],
                       grpc_upstreams=[victim.grpc_address, survivor.grpc_address]) as nginx:
        result = drive(nginx, images, victim, signal.SIGKILL)
        tryons = check_stream(result, nginx)
        calls = check_calls(result, nginx, victim)
        assert victim.process.wait(5) == -signal.SIGKILL
        assert_survivor_serves(nginx, images, survivor)

    numbers = report("SIGKILL", result, tryons, survivor, victim, calls)
    # The container HEALTHCHECK's probe tells the two apart.
    assert [healthcheck(survivor, path) for path in ("/healthz", "/readyz")] == [0, 0]
    assert healthcheck(victim, "/healthz") == 1
    # Requests that met the dead replica (reset in flight, or refused) were sent on:
    # each retried one ended on the survivor with a 200.
    assert numbers["retried"] >= 1, "no request met the killed replica: the kill came too late to test anything"
    for entry in tryons:
        if len(entry["upstreams"]) > 1:
            assert entry["upstreams"][0] == victim.address and entry["upstreams"][-1] == survivor.address, entry
            assert entry["statuses"].endswith("200"), entry


def assert_survivor_serves(nginx: Nginx, images: dict, survivor: ServerProcess, count: int = 4) -> None:
    """The survivor alone keeps serving once the victim has exited."""
    with httpx.Client(timeout=30) as client:
        statuses = [client.post(f"{nginx.url}/v1/tryon", files=images).status_code for _ in range(count)]
    assert statuses == [200] * count, statuses
    last = nginx.tryons(REQUESTS + count)[-count:]
    assert all(e["upstreams"][-1] == survivor.address for e in last), last


def healthcheck(replica: ServerProcess, path: str) -> int:
    probe = subprocess.run([sys.executable, str(REPO / "docker" / "healthcheck.py"), path], capture_output=True,
                           env={**os.environ, "TRYON_PORT": str(replica.port)}, timeout=20)
    return probe.returncode


def test_errors_nginx_makes_speak_the_service_format(tmp_path, nginx_binary, images):
    """No replica up: a 503 with Retry-After, in the service's JSON error shape; an
    oversized body: 413 the same way, before any replica is bothered (/v1/tryon/batch
    has its own, larger limit)."""
    small = render_nginx.ServiceLimits(max_upload_bytes=20_000)
    nowhere = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    with load_balancer(nginx_binary, tmp_path, nowhere, limits=small) as nginx:
        down = httpx.post(f"{nginx.url}/v1/tryon", files=images, timeout=10)
        assert down.status_code == 503 and down.headers["retry-after"] == "1"
        assert down.json()["error"]["code"] == "unavailable"
        huge = httpx.post(f"{nginx.url}/v1/tryon", content=b"x" * (small.request_body_limit + 1),
                          headers={"content-type": "application/octet-stream"}, timeout=10)
        assert huge.status_code == 413 and huge.json()["error"]["code"] == "payload_too_large"
        (entry,) = [e for e in nginx.tryons(2) if e["status"] == "503"]
        assert len(entry["upstreams"]) == 2, "both replicas were tried before giving up"
        # A batch may be larger (its own limit): nginx takes it and looks for a replica.
        batch = httpx.post(f"{nginx.url}/v1/tryon/batch", content=b"x" * (small.request_body_limit + 1),
                           headers={"content-type": "application/octet-stream"}, timeout=10)
        assert batch.status_code == 503 and batch.json()["error"]["code"] == "unavailable"
        too_big = httpx.post(f"{nginx.url}/v1/tryon/batch", content=b"x" * (small.batch_body_limit + 1),
                             headers={"content-type": "application/octet-stream"}, timeout=10)
        assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "payload_too_large"
