"""uvicorn around the app: one process on settings.host:port, or a front end on inherited sockets."""
from __future__ import annotations

import signal
import socket
import sys

import uvicorn
from fastapi import FastAPI

from ..processes.exits import DEVICE_FAILURE_EXIT, STARTUP_FAILURE
from ..settings import Settings
from .state import ServiceState


class DrainingServer(uvicorn.Server):
    """uvicorn's own SIGTERM handling (close the listener, let accepted requests
    finish, then run the lifespan's shutdown), plus readiness turning 503 first."""

    def __init__(self, config: uvicorn.Config, on_exit_signal):
        super().__init__(config)
        self.on_exit_signal = on_exit_signal

    def handle_exit(self, sig, frame) -> None:
        self.on_exit_signal()
        super().handle_exit(sig, frame)


def drained_exit(service: ServiceState):
    """The SIGTERM handler uvicorn re-raises through once drained: a normal exit (status 0, the
    deploy contract), unless the process is going because its device failed."""
    def handler(signum, frame) -> None:
        raise SystemExit(0 if service.healthy else DEVICE_FAILURE_EXIT)
    return handler


def serve(app: FastAPI, settings: Settings, sockets: list[socket.socket] | None = None) -> None:
    """uvicorn around ``app``, on settings.host:port or on ``sockets`` already listening."""
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None, access_log=False,
                            log_level=settings.log_level, lifespan="on",
                            timeout_graceful_shutdown=settings.drain_timeout_s)
    server = DrainingServer(config, on_exit_signal=app.state.service.begin_drain)
    # uvicorn re-raises SIGTERM once it has drained, through the handler that was there before it:
    # a drained shutdown is a normal exit (status 0), as the deploy contract says.
    service = app.state.service
    signal.signal(signal.SIGTERM, drained_exit(service))
    server.run(sockets=sockets)
    if not server.started:
        sys.exit(STARTUP_FAILURE)
    if not service.healthy:
        sys.exit(DEVICE_FAILURE_EXIT)
