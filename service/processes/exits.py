"""How a serving process ends, as its exit status says to the orchestrator that restarts it."""
from __future__ import annotations

import asyncio
import os
import signal

# The service never became ready (a bad setting, a port taken, a model that would not load).
STARTUP_FAILURE = 3
# The process shut down because its device failed: an orchestrator replaces it.
DEVICE_FAILURE_EXIT = 4
# After a device failure, time for the failed requests' answers to leave, and for probes to
# see the 503, before the drain starts.
DEVICE_FAILURE_EXIT_DELAY_S = 1.0


def drain_after_device_failure(loop: asyncio.AbstractEventLoop) -> None:
    """SIGTERM to this process after DEVICE_FAILURE_EXIT_DELAY_S: the usual drain answers what
    it holds, then the process exits."""
    loop.call_later(DEVICE_FAILURE_EXIT_DELAY_S, os.kill, os.getpid(), signal.SIGTERM)
