"""Shared fixtures: the stand-in weights of fill_weights.py, the golden files, a client of a module's server."""
from __future__ import annotations

import fcntl
import os
import sys

import httpx
import pytest
import torch

from tests.utils import FIXTURES
from tests.utils.installed import fail_missing_under_ci

sys.path.insert(0, str(FIXTURES))

from fill_weights import fill_state_dict, read_keys  # noqa: E402

# Two threads alone; one under pytest-xdist (make test: a worker a core), where two per worker
# would make OpenMP threads wait on each other across the two busy cores.
torch.set_num_threads(1 if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1 else 2)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI=true a test that skips for a missing real part (tests/utils/installed.py) fails."""
    outcome = yield
    fail_missing_under_ci(outcome.get_result(), os.environ.get("CI") == "true")


@pytest.fixture(scope="module", autouse=True)
def _alone_under_xdist(request, tmp_path_factory):
    """Under pytest-xdist, a module marked ``alone`` (its checks time a server on a CPU that
    nothing else may crowd) runs while no other worker runs a module: each module holds a
    shared lock, an ``alone`` one the exclusive lock, asked for through a turnstile that keeps
    the other worker's next modules from passing it while it waits."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        yield
        return
    alone = request.node.get_closest_marker("alone") is not None
    locks = tmp_path_factory.getbasetemp().parent  # the run's folder, shared by its workers
    with open(locks / "modules.turnstile", "a") as turnstile, open(locks / "modules.lock", "a") as lock:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        fcntl.flock(lock, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        fcntl.flock(turnstile, fcntl.LOCK_UN)
        yield
        fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def checkpoint_keys():
    return read_keys(FIXTURES / "checkpoint_keys.tsv")


@pytest.fixture(scope="session")
def standin_state(checkpoint_keys):
    """The deterministic stand-in for the published checkpoint (seed 0)."""
    return fill_state_dict(checkpoint_keys, 0)


@pytest.fixture(scope="session")
def standin_weights_file(tmp_path_factory, standin_state):
    """The stand-in weights as a .safetensors file, as a user would put one in weights/."""
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("weights") / "standin.safetensors"
    save_file(standin_state, str(path))
    return path


@pytest.fixture
def ieee_fp32_convolutions():
    """On a GPU: cuDNN without TF32 (on by default: 0.014 off the golden output) and
    with deterministic algorithms, whatever ran before in the process; restored after.
    An engine still sets TF32 for its own mode (model.precision.set_cuda_math)."""
    if not torch.cuda.is_available():
        yield
        return
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32,
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    yield
    (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32,
     torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) = saved


@pytest.fixture(scope="module")
def client(server):
    """An HTTP client of the test module's ``server`` (a ServerProcess fixture)."""
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c
