"""Benchmark of the engine process alone (TRYON_WORKERS > 1; not a timed test).

Every request of every front end passes through the one engine process: its CPU per
request bounds what one GPU box can serve, however many front ends feed it. This starts
that process as served (service/processes/engine_server.py, the one Batcher) with the model replaced
by bench.frontend_server's stand-in, and drives it straight over its Unix socket from this
process, as a front end would (service/processes/remote.py), with ``--in-flight`` try-ons (256x192
levels) outstanding at once. Each round measures both ways a try-on's images can cross:
in a slot of the shared arena (service/processes/arena.py) and inside the socket messages (as a
garments request's do, or a try-on's when no slot is free), alternating.

Reports the engine process's CPU milliseconds per request (user + system, from /proc)
and the batch sizes formed; req/s is the driver's, which shares the machine.

    python -m bench.engine_process --in-flight 8,32 --seconds 4 --repeats 3 \\
        --out bench/results/engine-process-cpu.json
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

from bench.frontend import cpu_seconds, finish, machine, median
from model.images import TryOnInputs
from service.metrics import Metrics
from service.processes.arena import Arena
from service.processes.engine_server import EngineServer
from service.processes.remote import RemoteBatcher
from service.processes.supervisor import event_loop_factory
from service.queue.host import EngineHost
from service.settings import Settings
from tests.fixtures.standin_engine import StandInEngine

SETTINGS = Settings(device="cpu", queue_limit=256)  # the queue never refuses the driver's load


async def serve_engine(socket_path: str, arena_fd: int) -> None:
    """The engine process, as tryon-serve runs it for its front ends (service/processes/supervisor.py)."""
    host = EngineHost(SETTINGS, Metrics(SETTINGS.max_batch_size), StandInEngine)
    await host.start()
    server = EngineServer(host.batcher, host.hello, [Arena(arena_fd, SETTINGS.image_hw)])
    await server.start(socket_path)
    print("serving", flush=True)
    await asyncio.Event().wait()


def levels(value: int) -> torch.Tensor:
    height, width = SETTINGS.image_hw
    return torch.full((height, width, 3), value, dtype=torch.uint8).permute(2, 0, 1)  # pixel order, as decoded


async def drive(socket_path: str, arena: Arena | None, in_flight: int, seconds: float) -> dict:
    front = RemoteBatcher(arena=(0, arena) if arena is not None else None)
    await front.connect(socket_path)
    inputs = TryOnInputs(masked_model=levels(1), pose=levels(2), cloth=levels(3), person_frame=None)
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    batch_sizes: Counter[int] = Counter()

    async def client():
        while loop.time() < end:
            result = await front.submit(inputs, loop.time() + 30).future
            if result.output[0, 0, 0] != 3:  # the stand-in answers the cloth
                raise AssertionError("the output did not come back intact")
            batch_sizes[result.batch_size] += 1

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(in_flight)))
    elapsed = time.perf_counter() - started
    await front.stop()
    return {"requests": sum(batch_sizes.values()), "elapsed_s": elapsed,
            "mean_batch_size": round(sum(n * c for n, c in batch_sizes.items()) / sum(batch_sizes.values()), 2)}


def measure(socket_path: str, engine_pid: int, arena: Arena | None, in_flight: int, seconds: float) -> dict:
    asyncio.run(drive(socket_path, arena, in_flight, 0.5))  # warm
    before = cpu_seconds([engine_pid])
    result = asyncio.run(drive(socket_path, arena, in_flight, seconds))
    cpu = cpu_seconds([engine_pid]) - before
    return {"images_cross": "arena" if arena is not None else "socket", "in_flight": in_flight,
            "requests": result["requests"], "requests_per_s": round(result["requests"] / result["elapsed_s"], 1),
            "mean_batch_size": result["mean_batch_size"],
            "engine_cpu_ms_per_request": round(cpu * 1000 / result["requests"], 4)}


def summary(results: list[dict]) -> dict:
    table: dict[str, dict] = {}
    for r in results:
        table.setdefault(f"{r['images_cross']} in_flight={r['in_flight']}", []).append(r["engine_cpu_ms_per_request"])
    return {key: {"engine_cpu_ms_per_request_median": median(v), "requests_per_s_per_engine_core": round(1000 / median(v))}
            for key, v in table.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--in-flight", default="8,32", help="try-ons outstanding at once (comma-separated)")
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--serve", nargs=2, metavar=("SOCKET", "ARENA_FD"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:  # the engine process's own loop
            return runner.run(serve_engine(args.serve[0], int(args.serve[1])))

    arena = Arena.create(256, SETTINGS.image_hw)
    report = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": machine(("torch", "uvloop")),
              "settings": {"max_batch_size": SETTINGS.max_batch_size, "max_batch_wait_ms": SETTINGS.max_batch_wait_ms,
                           "image_size": SETTINGS.image_size},
              "results": []}
    with tempfile.TemporaryDirectory() as folder:
        socket_path = os.path.join(folder, "engine.sock")
        env = dict(os.environ, OMP_NUM_THREADS="1")
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        engine = subprocess.Popen([sys.executable, "-m", "bench.engine_process", "--serve", socket_path,
                                   str(arena.fd)], pass_fds=[arena.fd], stdout=subprocess.PIPE, text=True, env=env)
        try:
            while (line := engine.stdout.readline()) and line.strip() != "serving":
                pass
            if engine.poll() is not None:
                raise SystemExit("the engine process did not start")
            for _ in range(args.repeats):
                for in_flight in map(int, args.in_flight.split(",")):
                    for crossing in (arena, None):
                        report["results"].append(measure(socket_path, engine.pid, crossing, in_flight, args.seconds))
                        print(json.dumps(report["results"][-1]), file=sys.stderr, flush=True)
        finally:
            engine.kill()
            engine.wait()
    finish(report, summary(report["results"]), args.out)


if __name__ == "__main__":
    main()
