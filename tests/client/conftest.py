"""What the client's tests share: a real server for the client's calls (``server``, its ``reference``
answer) and one for its catalog jobs (``jobs_server``, its ``jobs_reference`` answers)."""
from __future__ import annotations

import pytest

from tests.fixtures.service.harness import running_server
from tests.utils.client import API_KEY, CLOTH, JOBS_API_KEY, PERSON, parts, raw
from tests.utils.jobs import PERSON as JOB_PERSON, SECRET, garments
from tests.utils.local_http import LocalServer
from tryon_client import TryOnClient


@pytest.fixture(scope="module")
def image_server():
    with LocalServer() as images:
        images.add("/cloth.png", CLOTH.read_bytes(), "image/png")
        yield images


@pytest.fixture(scope="module")
def server(tmp_path_factory, standin_weights_file, image_server):
    # One item per engine call, so every answer is bit for bit the same, whatever else runs.
    with running_server({"TRYON_WEIGHTS": str(standin_weights_file), "TRYON_MAX_BATCH_SIZE": "1",
                         "TRYON_API_KEYS": API_KEY, "TRYON_URL_ALLOW_HOSTS": f"127.0.0.1:{image_server.port}"},
                        tmp_path_factory.mktemp("logs")) as proc:
        yield proc


@pytest.fixture(scope="module")
def reference(server) -> bytes:
    return raw(server, "/v1/tryon", parts(**PERSON, cloth=CLOTH)).content


@pytest.fixture(scope="module")
def jobs_server(tmp_path_factory, standin_weights_file):
    env = {"TRYON_WEIGHTS": str(standin_weights_file), "TRYON_API_KEYS": JOBS_API_KEY, "TRYON_MAX_BATCH_SIZE": "1",
           "TRYON_URL_ALLOW_HOSTS": "127.0.0.1", "TRYON_WEBHOOK_SECRET": SECRET, "TRYON_JOBS_TASK_GARMENTS": "2",
           "TRYON_JOBS_MAX_GARMENTS": "6"}
    with running_server(env, tmp_path_factory.mktemp("logs")) as proc:
        yield proc


@pytest.fixture(scope="module")
def jobs_reference(jobs_server) -> list[bytes]:
    """What /v1/tryon answers for each of garments(2), as PNG (the server has no key for a raw request:
    the client's own tryon, already tested against a raw one in test_sync.py)."""
    with TryOnClient(jobs_server.url, api_key=JOBS_API_KEY) as client:
        return [client.tryon(**JOB_PERSON, cloth=c, format="png").image for c in garments(2)]
