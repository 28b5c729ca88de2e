"""``tryon-serve`` / ``python -m service``: uvicorn around create_app; flags override TRYON_* variables."""
from __future__ import annotations

import argparse
import signal
import socket
import sys

import uvicorn
from pydantic import ValidationError

from .app import create_app
from .logs import configure_logging
from .settings import Settings
from .state import DEVICE_FAILURE_EXIT, EngineFactory, ServiceState

STARTUP_FAILURE = 3


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


def parse_args(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="tryon-serve", description="Serve DAFlow virtual try-on over HTTP. "
                                     "Every flag overrides its TRYON_* environment variable.")
    flag = parser.add_argument
    flag("--host", help="TRYON_HOST (127.0.0.1)")
    flag("--port", type=int, help="TRYON_PORT (8000)")
    flag("--device", help="TRYON_DEVICE: auto, cpu, cuda, cuda:1 (auto)")
    flag("--weights", help="TRYON_WEIGHTS: checkpoint path (unset: look in weights/)")
    flag("--sampler", help="TRYON_SAMPLER: auto, torch, numba, triton (auto)")
    flag("--image-size", help="TRYON_IMAGE_SIZE: HxW (256x192)")
    flag("--workers", type=int, help="TRYON_WORKERS: front-end processes feeding the one engine process (1)")
    flag("--max-batch-size", type=int, help="TRYON_MAX_BATCH_SIZE (8)")
    flag("--max-batch-wait-ms", type=float, help="TRYON_MAX_BATCH_WAIT_MS (5)")
    flag("--queue-limit", type=int, help="TRYON_QUEUE_LIMIT (64)")
    flag("--log-level", help="TRYON_LOG_LEVEL (info)")
    return {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}


def main(argv=None, engine_factory: EngineFactory | None = None) -> None:
    """``engine_factory``: a stand-in for the model (bench/frontend_server.py); None serves the model."""
    try:
        settings = Settings(**parse_args(argv))
    except ValidationError as exc:
        sys.exit(f"tryon-serve: invalid settings:\n{exc}")
    configure_logging(settings.log_level)
    if settings.workers > 1:
        from .workers import serve_with_workers  # noqa: PLC0415  (it imports this module)
        sys.exit(serve_with_workers(settings, engine_factory))
    serve(create_app(settings, engine_factory), settings)


def serve(app, settings: Settings, sockets: list[socket.socket] | None = None) -> None:
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


if __name__ == "__main__":
    main()
