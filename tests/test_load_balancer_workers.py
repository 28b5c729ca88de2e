"""The load-balancer tests, unchanged, with every replica running TRYON_WORKERS=2: one engine
process and two front ends behind nginx; SIGTERM drains them all, SIGKILL of the engine
process takes its front ends with it (nginx retries on the survivor)."""
from __future__ import annotations

import pytest

from tests import test_load_balancer
from tests.fixtures.service.harness import ServerProcess
from tests.test_load_balancer import *  # noqa: F401,F403

# Three replicas of three processes each start on a shared CPU: more time than one process needs.
pytestmark = [pytest.mark.timeout(360), pytest.mark.alone]  # alone: as tests/test_load_balancer.py


@pytest.fixture(scope="module", autouse=True)
def two_front_ends():
    ServerProcess.overrides = {"TRYON_WORKERS": "2"}
    startup = test_load_balancer.STARTUP_TIMEOUT_S
    test_load_balancer.STARTUP_TIMEOUT_S = 240
    yield
    ServerProcess.overrides = {}
    test_load_balancer.STARTUP_TIMEOUT_S = startup
