"""How a serving process ends, as its exit status says to the orchestrator that restarts it."""
from __future__ import annotations

import asyncio
import logging
import os
import signal

from ..metrics import Metrics

# The service never became ready (a bad setting, a port taken, a model that would not load).
STARTUP_FAILURE = 3
# The process shut down because its device failed: an orchestrator replaces it.
DEVICE_FAILURE_EXIT = 4
# After a device failure, time for the failed requests' answers to leave, and for probes to
# see the 503, before the drain starts.
DEVICE_FAILURE_EXIT_DELAY_S = 1.0


def after_device_failure(metrics: Metrics, loop: asyncio.AbstractEventLoop | None) -> None:
    """The process that runs the engine saw its device break: liveness and readiness turn 503, and
    (with a running ``loop``) SIGTERM to itself after DEVICE_FAILURE_EXIT_DELAY_S: the usual drain
    answers what it holds, then the process exits."""
    metrics.ready.set(0)
    metrics.healthy.set(0)
    if loop is not None:
        loop.call_later(DEVICE_FAILURE_EXIT_DELAY_S, os.kill, os.getpid(), signal.SIGTERM)


def log_drain(log: logging.Logger, depth: int) -> None:
    """The line a serving process writes as its drain begins (readiness already 503)."""
    log.info("draining: readiness is now 503, finishing %d queued and in-flight requests", depth)
