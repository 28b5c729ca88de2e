"""Load benchmark of the HTTP service (not a timed test).

Starts ``python -m service`` once per configuration (or drives a running
server with --url), runs N concurrent closed-loop clients over 127.0.0.1 for
a bounded time, and reports requests/s, p50/p95/p99 latency, errors by
status, and the batch sizes the server formed (from its /metrics), with the
machine's load average, as JSON.

    python -m bench.load --configs batched=4,unbatched=1 --clients 4 --duration 40 \
        --sampler torch --out bench/results/load-cpu.json
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.common import ROOT, finish_report, standin_weights_file
from tests.fixtures.service.probe import ServerExited, wait_until_ok

EXAMPLES = ROOT / "service" / "examples"


def batch_histogram(metrics_text: str) -> dict[str, float]:
    """Cumulative bucket counts of tryon_batch_size, by upper bound."""
    return {s.labels["le"]: s.value for family in text_string_to_metric_families(metrics_text)
            for s in family.samples if s.name == "tryon_batch_size_bucket"}


def batches_formed(before: dict[str, float], after: dict[str, float]) -> dict[str, int]:
    """Batches of each size run during the measurement (de-cumulated bucket deltas)."""
    bounds = sorted((b for b in after if b != "+Inf"), key=float)
    formed, below = {}, 0.0
    for bound in bounds:
        cumulative = after[bound] - before.get(bound, 0.0)
        if cumulative - below:
            formed[str(int(float(bound)))] = int(cumulative - below)
        below = cumulative
    return formed


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return round(sorted_values[index], 4)


async def drive(url: str, clients: int, duration: float, timeout: float, api_key: str | None) -> dict:
    files = {name: (f"{name}.png", (EXAMPLES / f"{name}.png").read_bytes(), "image/png")
             for name in ("masked_model", "pose", "cloth")}
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    latencies: list[float] = []
    statuses: Counter = Counter()
    stop_at = time.monotonic() + duration

    async def client_loop(client: httpx.AsyncClient):
        while time.monotonic() < stop_at:
            started = time.monotonic()
            try:
                answer = await client.post("/v1/tryon", files=files, headers=headers)
                await answer.aread()
                statuses[str(answer.status_code)] += 1
                if answer.status_code == 200:
                    latencies.append(time.monotonic() - started)
            except httpx.HTTPError as exc:
                statuses[type(exc).__name__] += 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        began = time.monotonic()
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
        elapsed = time.monotonic() - began
    latencies.sort()
    ok = statuses.get("200", 0)
    return {"elapsed_s": round(elapsed, 2), "requests": sum(statuses.values()), "ok": ok,
            "requests_per_s": round(ok / elapsed, 3),
            "latency_s": {"p50": percentile(latencies, 50), "p95": percentile(latencies, 95),
                          "p99": percentile(latencies, 99), "max": round(latencies[-1], 4) if latencies else None},
            "errors_by_status": {k: v for k, v in statuses.items() if k != "200"}}


def start_server(port: int, env: dict[str, str], log_path: Path) -> subprocess.Popen:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TRYON_")} | env
    # The repository first, then what the caller had (bench.gpu_check's offline packages).
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    with open(log_path, "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)],
                                cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT)


def wait_ready(url: str, process: subprocess.Popen | None, timeout: float = 300, log_path: Path | None = None) -> dict:
    """The server's /readyz once it answers 200; a server that exits or never gets ready ends the
    benchmark with its reason and the last lines of its log."""
    try:
        return wait_until_ok(f"{url}/readyz", process, timeout, interval=0.5).json()
    except (ServerExited, TimeoutError) as exc:
        tail = log_path.read_text(errors="replace")[-3000:] if log_path and log_path.exists() else ""
        raise SystemExit(f"{exc}\n{tail}") from None


@dataclass
class StandinServer:
    """A started ``python -m service`` (see ``standin_server``)."""
    url: str
    port: int
    process: subprocess.Popen
    ready: dict = field(default_factory=dict)  # its /readyz once ready
    exit_status: int | None = None  # after the block: its status once SIGTERM'd


@contextmanager
def standin_server(env: dict[str, str]) -> Iterator[StandinServer]:
    """``python -m service`` on a free 127.0.0.1 port with the stand-in weights, quiet logs, no
    response cache (a benchmark repeats its inputs) and ``env`` on top; ready for the block,
    SIGTERM'd after it."""
    with tempfile.TemporaryDirectory() as tmp, socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        env = {"TRYON_WEIGHTS": str(standin_weights_file(Path(tmp))), "TRYON_LOG_LEVEL": "warning",
               "TRYON_CACHE_BYTES": "0"} | env
        server = StandinServer(f"http://127.0.0.1:{port}", port, start_server(port, env, Path(tmp) / "server.log"))
        try:
            server.ready = wait_ready(server.url, server.process)
            yield server
        finally:
            server.process.send_signal(signal.SIGTERM)
            server.exit_status = server.process.wait(120)


def measure(name: str, url: str, args, process=None, log_path: Path | None = None) -> dict:
    ready = wait_ready(url, process, log_path=log_path)
    before = batch_histogram(httpx.get(f"{url}/metrics").text)
    load_before = os.getloadavg()
    result = asyncio.run(drive(url, args.clients, args.duration, args.timeout, args.api_key))
    after = batch_histogram(httpx.get(f"{url}/metrics").text)
    formed = batches_formed(before, after)
    items = sum(int(size) * count for size, count in formed.items())
    return {"config": name, "server": {k: ready.get(k) for k in ("device", "weights", "random_weights", "sampler",
                                                                  "image_size", "max_batch_size", "max_batch_wait_ms",
                                                                  "batch_sizes", "queue_limit", "precision",
                                                                  "cuda_graphs", "requested_sampler",
                                                                  "sampler_fallback", "cuda_graphs_fallback",
                                                                  "precision_fallback")},
            "clients": args.clients, "duration_s": args.duration, "omp_threads": args.threads or "default",
            **result,
            "batches_formed": formed, "mean_batch_size": round(items / max(1, sum(formed.values())), 3),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="drive this running server instead of starting one per configuration")
    parser.add_argument("--configs", default="batched=8,unbatched=1",
                        help="name=max_batch_size,... started one after the other (default batched=8,unbatched=1)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load per configuration")
    parser.add_argument("--timeout", type=float, default=120.0, help="client timeout per request")
    parser.add_argument("--image-size", default="256x192")
    parser.add_argument("--batch-wait-ms", default="5")
    parser.add_argument("--sampler", default="auto")
    parser.add_argument("--weights", help="checkpoint for the started servers (default: the stand-in weights)")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS for the started servers (default: torch's own)")
    parser.add_argument("--api-key")
    parser.add_argument("--device", help="TRYON_DEVICE for the started servers (default: the service's)")
    parser.add_argument("--workers", type=int, help="TRYON_WORKERS for the started servers (default: the service's)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    report = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": {
        "cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}, "results": []}
    if args.url:
        report["results"].append(measure("running-server", args.url.rstrip("/"), args))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            weights = args.weights or str(standin_weights_file(Path(tmp)))
            for item in args.configs.split(","):
                name, max_batch = item.split("=")
                port = 18000 + os.getpid() % 1000
                env = {"TRYON_WEIGHTS": weights, "TRYON_IMAGE_SIZE": args.image_size, "TRYON_SAMPLER": args.sampler,
                       "TRYON_MAX_BATCH_SIZE": max_batch, "TRYON_MAX_BATCH_WAIT_MS": args.batch_wait_ms,
                       "TRYON_REQUEST_TIMEOUT_S": str(args.timeout), "TRYON_LOG_LEVEL": "warning",
                       "TRYON_CACHE_BYTES": "0"}  # the engine path: repeated inputs must not be cache hits
                if args.threads:
                    env["OMP_NUM_THREADS"] = str(args.threads)
                if args.device:
                    env["TRYON_DEVICE"] = args.device
                if args.workers:
                    env["TRYON_WORKERS"] = str(args.workers)
                log_path = Path(tmp) / f"{name}.log"
                process = start_server(port, env, log_path)
                try:
                    report["results"].append(measure(name, f"http://127.0.0.1:{port}", args, process, log_path))
                finally:
                    process.send_signal(signal.SIGTERM)
                    process.wait(120)
                print(json.dumps(report["results"][-1]), file=sys.stderr, flush=True)
    finish_report(report, args.out)


if __name__ == "__main__":
    main()
