"""What the tests of service/jobs/ share: a real redis-server, append-only as deployed."""
from __future__ import annotations

import signal
import subprocess
import time

import pytest

from tests.fixtures.service.harness import free_port, redis_server_binary, stop_process
from tests.utils.installed import skip_missing


class AppendOnlyRedis:
    """redis-server on 127.0.0.1 with appendonly yes and noeviction (the job store's deployment), restartable
    on the same port and files."""

    def __init__(self, binary: str, work_dir):
        self.binary, self.work_dir, self.port = binary, work_dir, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "yes",
             "--appendfsync", "always", "--maxmemory-policy", "noeviction", "--dir", str(self.work_dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + 20
        while subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True).stdout != b"PONG\n":
            assert time.monotonic() < end and self.process.poll() is None, "redis-server did not start"
            time.sleep(0.05)

    def stop(self, sig=signal.SIGTERM) -> None:
        stop_process(self.process, sig, 10)


@pytest.fixture(scope="module")
def redis(tmp_path_factory):
    binary = redis_server_binary()
    if binary is None:
        skip_missing("redis-server", "apt-get install redis-server; .ci/run does this")
    server = AppendOnlyRedis(binary, tmp_path_factory.mktemp("redis"))
    yield server
    server.stop(signal.SIGKILL)
