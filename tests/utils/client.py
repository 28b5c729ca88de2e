"""What the client's tests (tests/client/) share: the example inputs, the API keys of their servers
(tests/client/conftest.py), and a request made by hand as the reference."""
from __future__ import annotations

import httpx

from tests.fixtures.service.harness import REPO

API_KEY = "client-test-key"
JOBS_API_KEY = "jobs-client-key"
EXAMPLES = REPO / "service" / "examples"
PERSON = {"masked_model": EXAMPLES / "masked_model.png", "pose": EXAMPLES / "pose.png"}
CLOTH = EXAMPLES / "cloth.png"
KEYPOINTS = EXAMPLES / "person_keypoints.json"


def raw(server, path: str, fields: list, **kwargs) -> httpx.Response:
    """The same request by hand, as the reference."""
    answer = httpx.post(f"{server.url}{path}", files=fields, headers={"Authorization": f"Bearer {API_KEY}",
                                                                       **kwargs.pop("headers", {})},
                        timeout=60, **kwargs)
    assert answer.status_code == 200, answer.text
    return answer


def content(value) -> bytes:
    return value if isinstance(value, bytes) else value.read_bytes()


def parts(**inputs) -> list:
    """Multipart files for httpx: each input, a path or bytes, under its field name."""
    return [(name, (name, content(value))) for name, value in inputs.items()]
