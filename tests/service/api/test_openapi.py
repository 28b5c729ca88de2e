"""The OpenAPI document is the contract: a fuzzer nobody here wrote (schemathesis,
pinned in the test extra) generates requests from /openapi.json against a real
server and checks every answer against it, with all its checks; the three it
narrows, and why, are in tests/utils/schemathesis_hooks.py."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from service.metrics import CONTENT_TYPE_LATEST
from tests.fixtures.service.harness import running_server
from tests.utils import REPO_PYTHONPATH

API_KEY = "contract-key"
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
# A request refused as too large (413) is rejected as surely as a 422; schemathesis's
# default list for schema-violating requests lacks it.
CONFIG = """
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory, standin_weights_file):
    # Two batch sizes to warm up, not eight: the contract is the same for any batch size.
    with running_server({"TRYON_WEIGHTS": str(standin_weights_file), "TRYON_API_KEYS": API_KEY,
                         "TRYON_MAX_GARMENTS": "3", "TRYON_MAX_BATCH_WAIT_MS": "1", "TRYON_MAX_BATCH_SIZE": "2"},
                        tmp_path_factory.mktemp("logs")) as proc:
        yield proc


def test_every_route_documents_its_errors_and_real_media_types(server):
    document = httpx.get(f"{server.url}/openapi.json").json()
    paths = document["paths"]
    error_ref = {"$ref": "#/components/schemas/ErrorBody"}
    for path, statuses in {"/v1/tryon": {400, 401, 408, 413, 415, 422, 500, 502, 503, 504},
                           "/v1/tryon/batch": {400, 401, 408, 413, 415, 422, 500, 502, 503, 504},
                           "/v1/prepare": {400, 401, 408, 413, 415, 422, 502, 503, 504}}.items():
        responses = paths[path]["post"]["responses"]
        assert {int(s) for s in responses} == statuses | {200}, path
        for status in statuses:
            assert responses[str(status)]["content"]["application/json"]["schema"] == error_ref, (path, status)
        assert "Retry-After" in responses["503"]["headers"]
        body = paths[path]["post"]["requestBody"]["content"]
        assert {len(body[m]["schema"]["oneOf"]) for m in ("multipart/form-data", "application/json")} == {4}
    assert set(paths["/v1/tryon"]["post"]["responses"]["200"]["content"]) == {"image/jpeg", "image/png", "image/webp"}
    assert set(paths["/v1/tryon/batch"]["post"]["responses"]["200"]["content"]) == {"multipart/mixed",
                                                                                   "application/x-ndjson"}
    assert set(paths["/v1/prepare"]["post"]["responses"]["200"]["content"]) == {"image/png", "multipart/mixed",
                                                                               "application/json"}
    metrics = httpx.get(f"{server.url}/metrics")
    assert list(paths["/metrics"]["get"]["responses"]["200"]["content"]) == [metrics.headers["content-type"]]
    assert metrics.headers["content-type"] == CONTENT_TYPE_LATEST


def test_schemathesis_finds_no_failure(server, tmp_path):
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    command = [str(SCHEMATHESIS), "--config-file", str(config), "run", f"{server.url}/openapi.json",
               "--checks", "all", "--exclude-checks", "positive_data_acceptance,negative_data_rejection,not_a_server_error",
               "--max-examples", "15", "--max-time", "60", "--seed", "20261124", "--workers", "1",
               "--generation-database", "none", "--no-color", "--header", f"Authorization: Bearer {API_KEY}"]
    env = os.environ | {"PYTHONPATH": REPO_PYTHONPATH, "SCHEMATHESIS_HOOKS": "tests.utils.schemathesis_hooks"}
    run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    report = run.stdout + run.stderr
    assert run.returncode == 0, report[-8000:]
    document = httpx.get(f"{server.url}/openapi.json").json()
    operations = sum(len(methods) for methods in document["paths"].values())
    assert f"Tested: {operations}" in report and "generated" in report, report[-3000:]  # every operation
    # The server is none the worse for it.
    assert httpx.get(f"{server.url}/readyz").status_code == 200


def test_the_schema_states_the_protocol_paths_the_smallest_timeout_and_nonempty_keypoints(server):
    from service.api.options import MIN_TIMEOUT_S

    document = httpx.get(f"{server.url}/openapi.json").json()
    paths = document["paths"]
    for path in ("/v2/health/live", "/v2/health/ready", "/v2", "/v2/models/{model_name}",
                 "/v2/models/{model_name}/ready", "/v2/models/{model_name}/infer"):
        assert path in paths, path
    infer = paths["/v2/models/{model_name}/infer"]["post"]
    assert set(infer["requestBody"]["content"]) == {"application/json", "application/octet-stream"}
    assert infer["responses"]["400"]["content"]["application/json"]["schema"] == \
        {"$ref": "#/components/schemas/ProtocolError"}
    query = {p["name"]: p["schema"] for p in paths["/v1/tryon"]["post"]["parameters"] if p["in"] == "query"}
    timeout = query["timeout"].get("anyOf", [query["timeout"]])[0]
    assert timeout["minimum"] == MIN_TIMEOUT_S
    body = paths["/v1/tryon"]["post"]["requestBody"]["content"]
    # Keypoints as text are the JSON of an object or a list: the schema says so ("5" was schema-valid).
    multipart_keypoints = body["multipart/form-data"]["schema"]["properties"]["keypoints"]
    assert multipart_keypoints["pattern"] == r"^\s*[\[{]" and multipart_keypoints["minLength"] == 2
    assert body["application/json"]["schema"]["properties"]["timeout"]["minimum"] == MIN_TIMEOUT_S
    assert "null" not in str(body["application/json"]["schema"]["properties"]["timeout"])
    branches = body["application/json"]["schema"]["properties"]["keypoints"]["anyOf"]
    assert [b.get("minProperties", b.get("minItems", b.get("minLength"))) for b in branches] == [1, 1, 2]
    assert branches[2]["pattern"] == multipart_keypoints["pattern"]


def test_every_keyed_route_says_so_jobs_too_and_the_docs_load_nothing_from_elsewhere(server):
    document = httpx.get(f"{server.url}/openapi.json").json()
    keyed = {(path, method) for path, operations in document["paths"].items()
             for method, operation in operations.items() if operation.get("security")}
    for path, method in (("/v1/tryon", "post"), ("/v1/jobs", "post"), ("/v1/jobs/{job_id}", "get"),
                         ("/v1/jobs/{job_id}/results/{index}", "get"), ("/v1/jobs/{job_id}/cancel", "post"),
                         ("/v2/models/{model_name}/infer", "post")):
        assert (path, method) in keyed, path
        assert httpx.request(method, f"{server.url}{path.format(job_id='job_' + 'x' * 32, index=0, model_name='daflow')}"
                             ).status_code == 401, path  # and the route does check the key
    assert not {p for p, _ in keyed} & {"/healthz", "/readyz", "/metrics", "/v2/health/live"}
    job_id = next(p for p in document["paths"]["/v1/jobs/{job_id}"]["get"]["parameters"] if p["name"] == "job_id")
    assert job_id["schema"]["pattern"] == "^job_[A-Za-z0-9_-]{32}$"
    page = httpx.get(f"{server.url}/docs")
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sources and all(s.startswith("/") for s in sources), sources  # no CDN: every script and style is ours
    for source in sources:
        assert httpx.get(f"{server.url}{source}").status_code == 200, source
