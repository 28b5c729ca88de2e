"""TRYON_WORKERS > 1: one engine process, N front-end processes, one listening port.

The process tryon-serve starts loads and warms the model once, runs the one
Batcher (service/queue/host.py), and serves it on a Unix socket
(service/processes/engine_server.py). It then binds the HTTP port and starts N
front-end processes (``python -m service.api.front_end``), each on a listening socket of its own on that port
(SO_REUSEPORT, where Linux spreads new connections evenly over them; a shared
socket went to whichever process woke first, and its event loop accepted every
waiting connection at once, so one front end could hold all of a load
balancer's keep-alive connections). Each runs the whole HTTP app (parsing,
fetching, decoding, encoding) and queues its work through a RemoteBatcher, so
batches still form from every request in one place; the images of a try-on cross in an
arena of memory the two processes share (service/processes/arena.py), not through the socket.

SIGTERM (or SIGINT) to the engine process: it reports draining, passes the
signal to every front end, which drains as a single process does (readiness
503, accepted requests finished), waits for them, then stops the engine.
A front end that dies ends the service (exit 1), for the orchestrator to restart.

Metrics: every process writes to PROMETHEUS_MULTIPROC_DIR, which prometheus_client
reads when imported; when it is not set, the command line is executed again with a
fresh folder (the same process id, so signals still reach it).
"""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from prometheus_client import multiprocess

from ..logs import announce_ready
from ..metrics import Metrics
from ..queue.host import EngineFactory, EngineHost, weights_name
from ..settings import Settings
from .. import tracing
from .arena import Arena
from .engine_server import EngineServer
from .exits import STARTUP_FAILURE, after_device_failure, log_drain

log = logging.getLogger("service.workers")
# What each front-end process runs: the HTTP app on an inherited socket (a module of the HTTP
# edge, started by name: this room imports nothing of it).
FRONT_END_MODULE = "service.api.front_end"
# How often the engine process reads the GPU's memory for the gauges.
DEVICE_GAUGES_PERIOD_S = 5.0
METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR"
_OWNED_METRICS_DIR = "TRYON_OWNED_METRICS_DIR"  # set when this module made the folder (and removes it)


def serve_with_workers(settings: Settings, engine_factory: EngineFactory | None = None) -> int:
    if not os.environ.get(METRICS_DIR):
        folder = tempfile.mkdtemp(prefix="tryon-metrics-")
        os.environ |= {METRICS_DIR: folder, _OWNED_METRICS_DIR: folder}
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
    for stale in Path(os.environ[METRICS_DIR]).glob("*.db"):  # a previous run's values
        stale.unlink()
    try:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            return runner.run(_supervise(settings, engine_factory))
    finally:
        if os.environ.get(_OWNED_METRICS_DIR) == os.environ[METRICS_DIR]:
            shutil.rmtree(os.environ[METRICS_DIR], ignore_errors=True)


def event_loop_factory():
    """uvloop's loop where it is installed, as uvicorn picks for the front ends: every request
    passes through the engine process's loop, and asyncio's own cost it about twice the CPU
    (a batch of one: 1.1 against 0.6 ms, bench/engine_process.py)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _listen(settings: Settings, count: int) -> list[socket.socket]:
    """``count`` listening sockets on the port, with SO_REUSEPORT on Linux; elsewhere one, shared."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    # Bound once without SO_REUSEPORT first: a port another server already holds fails here, as
    # it always did, instead of being shared with it (that server's connections split between us).
    with socket.create_server((settings.host, settings.port), family=family) as probe:
        port = probe.getsockname()[1]  # the one bound, when settings.port is 0
    if settings.grpc_port is not None:  # each front end binds it with SO_REUSEPORT (service/api/grpc_server.py)
        socket.create_server((settings.host, settings.grpc_port), family=family).close()
    reuse_port = sys.platform == "linux"
    sockets = [socket.create_server((settings.host, port), family=family, backlog=2048, reuse_port=reuse_port)
               for _ in range(count if reuse_port else 1)]
    for sock in sockets:
        sock.set_inheritable(True)
    return sockets


def _start_front_end(settings: Settings, listener: socket.socket, engine_socket: str, arena_id: int,
                     arena: Arena) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-m", FRONT_END_MODULE, "--fd", str(listener.fileno()),
                                "--engine-socket", engine_socket, "--arena-id", str(arena_id),
                                "--arena-fd", str(arena.fd)],
                               pass_fds=[listener.fileno(), arena.fd], stdin=subprocess.PIPE)
    # The settings as this process resolved them (flags included) go through a pipe, not the
    # command line, where API keys would show in a process list.
    process.stdin.write(settings.model_dump_json().encode())
    process.stdin.close()
    return process


async def _supervise(settings: Settings, engine_factory: EngineFactory | None) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    metrics = Metrics(settings.max_batch_size)
    tracing.configure(metrics)
    host = EngineHost(settings, metrics, engine_factory,
                      on_device_failure=lambda reason: after_device_failure(metrics, loop))
    folder = tempfile.mkdtemp(prefix="tryon-engine-")
    front_ends: list[subprocess.Popen] = []
    try:
        try:
            await host.start()
            metrics.ready.set(1)
            announce_ready(settings, str(host.engine.device), weights_name(host.engine.weights), host.startup_s)
            if settings.jobs_unavailable:  # here, once: not once per front end
                log.warning("/v1/jobs answers 503 jobs_unavailable: %s", settings.jobs_unavailable)
            # A slot for every job the queue admits and the engine runs at once; more (a front end's
            # jobs in transit) cross through the socket.
            arenas = [Arena.create(settings.queue_limit + settings.max_batch_size, settings.image_hw)
                      for _ in range(settings.workers)]
            engine_server = EngineServer(host.batcher, host.hello, arenas)
            await engine_server.start(os.path.join(folder, "engine.sock"))
            listeners = _listen(settings, settings.workers)
        except Exception:
            log.exception("startup failed")
            return STARTUP_FAILURE
        front_ends = [_start_front_end(settings, listeners[i % len(listeners)], os.path.join(folder, "engine.sock"),
                                       i, arenas[i]) for i in range(settings.workers)]
        for listener in listeners:
            listener.close()  # the front ends hold them now
        log.info("engine process serving %d front-end processes", len(front_ends),
                 extra={"front_end_pids": [p.pid for p in front_ends]})
        exits = [loop.run_in_executor(None, p.wait) for p in front_ends]
        gauges = loop.create_task(_device_gauges(metrics, host.engine.device))
        stopping = loop.create_task(stop.wait())
        await asyncio.wait([stopping, *exits], return_when=asyncio.FIRST_COMPLETED)
        failed = not stop.is_set()
        if failed:
            log.error("a front-end process exited: stopping the service")
        metrics.ready.set(0)
        log_drain(log, host.batcher.depth)
        for process in front_ends:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        await asyncio.wait(exits, timeout=settings.drain_timeout_s + 10)
        stopping.cancel()
        gauges.cancel()
        await engine_server.stop()
        return 1 if failed else 0
    finally:
        _end(front_ends)
        metrics.ready.set(0)
        await host.stop()
        tracing.shutdown()
        log.info("stopped")
        shutil.rmtree(folder, ignore_errors=True)


async def _device_gauges(metrics: Metrics, device) -> None:
    """The GPU gauges from here, the process that holds the device's context, every few seconds
    (the front ends' /metrics sums this process's files; they never touch CUDA)."""
    if device.type != "cuda":
        return
    while True:
        await asyncio.to_thread(metrics.read_device_memory, device)
        await asyncio.sleep(DEVICE_GAUGES_PERIOD_S)


def _end(front_ends: list[subprocess.Popen]) -> None:
    for process in front_ends:
        if process.poll() is None:
            process.kill()
            process.wait()
        multiprocess.mark_process_dead(process.pid)
