"""Waiting for a server to answer: used by the benchmarks, the tests and anyone
scripting a start-up (a client-side helper; the service never calls it)."""
from __future__ import annotations

import subprocess
import time

import httpx


class ServerExited(RuntimeError):
    pass


def wait_until_ok(url: str, process: subprocess.Popen | None = None, timeout: float = 120,
                  interval: float = 0.2) -> httpx.Response:
    """Polls ``url`` until it answers 200; raises ServerExited if ``process``
    ends first, TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ServerExited(f"{process.args[0]} exited with {process.returncode} before {url} answered")
        try:
            answer = httpx.get(url, timeout=2)
            if answer.status_code == 200:
                return answer
        except httpx.TransportError:
            pass
        time.sleep(interval)
    raise TimeoutError(f"{url} did not answer 200 within {timeout} s")
