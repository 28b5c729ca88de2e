"""The load-balancer tests, unchanged, with every replica running TRYON_WORKERS=2: one engine
process and two front ends behind nginx; SIGTERM drains them all, SIGKILL of the engine
process takes its front ends with it (nginx retries on the survivor)."""
from __future__ import annotations

import pytest

from tests.fixtures.service.harness import ServerProcess
from tests.test_load_balancer import *  # noqa: F401,F403


@pytest.fixture(scope="module", autouse=True)
def two_front_ends():
    ServerProcess.overrides = {"TRYON_WORKERS": "2"}
    yield
    ServerProcess.overrides = {}
