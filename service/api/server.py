"""uvicorn around the app: one process on settings.host:port, or a front end on inherited sockets.

A replica may be reached without nginx in front (``docker run -p`` publishes it), so uvicorn is
run with what it lacks for that: at most TRYON_MAX_CONNECTIONS connections and requests (beyond,
uvicorn answers 503), a request line and headers of at most TRYON_MAX_HEADER_BYTES (431; uvicorn's
httptools parser took 300 MB of headers) that must arrive within TRYON_HEADER_TIMEOUT_S (408 and
closed; a half-sent request was held for ever). docs/deploy.md says what nginx adds on top.
"""
from __future__ import annotations

import asyncio
import signal
import socket
import sys

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ..processes.exits import DEVICE_FAILURE_EXIT, STARTUP_FAILURE
from ..settings import Settings
from .state import ServiceState


class HeadersRefused(Exception):
    """Raised in a parser callback to stop parsing a request already answered (431)."""


class BoundedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a bound on a request's line and headers and a deadline for
    them. ``bounded_protocol`` makes the subclass that carries the settings' numbers."""
    max_header_bytes = 32_768
    header_timeout_s = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)
        self._header_bytes = 0
        self._refused = False
        self._header_timer: asyncio.TimerHandle | None = None
        self._start_header_timer()

    def _start_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _answer_and_close(self, status: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(b"HTTP/1.1 " + status + b"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            self.transport.close()

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        self._refused = True
        self._answer_and_close(b"408 Request Timeout")

    def _count(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > self.max_header_bytes:
            self._refused = True
            self._stop_header_timer()
            self._answer_and_close(b"431 Request Header Fields Too Large")
            raise HeadersRefused

    def data_received(self, data: bytes) -> None:
        if not self._refused:
            super().data_received(data)

    def send_400_response(self, msg: str) -> None:
        if not self._refused:  # (a refusal's own exception surfaces here as a parser error)
            super().send_400_response(msg)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        self._header_bytes = 0
        self._start_header_timer()
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._stop_header_timer()
        super().on_headers_complete()


def bounded_protocol(settings: Settings) -> type[BoundedHttpProtocol]:
    return type("BoundedHttp", (BoundedHttpProtocol,), {"max_header_bytes": settings.max_header_bytes,
                                                         "header_timeout_s": settings.header_timeout_s})


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
                            timeout_graceful_shutdown=settings.drain_timeout_s, http=bounded_protocol(settings),
                            limit_concurrency=settings.max_connections)
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
