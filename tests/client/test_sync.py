"""The Python client (client/, ``tryon_client``) against a real server: every input form, the
streamed batch, prepare, refusals as TryOnError, retries after 503 and failed connections."""
from __future__ import annotations

import asyncio
import base64
import io
import json
import subprocess
import sys
import time
import tomllib

import httpx
import pytest
from PIL import Image, ImageOps

from tests.fixtures.service.harness import REPO, ServerProcess, free_port, running_server, stop_process
from tests.utils.local_http import LocalServer
from tryon_client import AsyncTryOnClient, TryOnClient, TryOnError

API_KEY = "client-test-key"
EXAMPLES = REPO / "service" / "examples"
PERSON = {"masked_model": EXAMPLES / "masked_model.png", "pose": EXAMPLES / "pose.png"}
CLOTH = EXAMPLES / "cloth.png"
KEYPOINTS = EXAMPLES / "person_keypoints.json"


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


MIRRORED = png(ImageOps.mirror(Image.open(CLOTH).convert("RGB")))


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


@pytest.fixture
def client(server):
    with TryOnClient(server.url, api_key=API_KEY) as tryon:
        yield tryon


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


@pytest.fixture(scope="module")
def reference(server) -> bytes:
    return raw(server, "/v1/tryon", parts(**PERSON, cloth=CLOTH)).content


def test_tryon_takes_paths_bytes_file_objects_and_urls(client, reference, image_server):
    by_path = client.tryon(**PERSON, cloth=CLOTH)
    assert by_path.image == reference
    assert by_path.media_type == "image/jpeg" and by_path.weights == "standin.safetensors"
    assert {"decode", "queue", "inference", "encode"} <= set(by_path.timings) and by_path.request_id
    assert client.tryon(masked_model=str(PERSON["masked_model"]), pose=PERSON["pose"].read_bytes(),
                        cloth=f"{image_server.base}/cloth.png").image == reference
    with open(CLOTH, "rb") as cloth:
        assert client.tryon(**PERSON, cloth=cloth).image == reference
    png_answer = client.tryon(**PERSON, cloth=CLOTH, format="png", size="original")
    assert png_answer.media_type == "image/png" and png_answer.image.startswith(b"\x89PNG")


def test_tryon_from_a_photo_and_keypoints_as_a_dict(client, server):
    want = raw(server, "/v1/tryon", parts(person=EXAMPLES / "person.jpg", keypoints=KEYPOINTS, cloth=CLOTH))
    keypoints = json.loads(KEYPOINTS.read_text())
    got = client.tryon(person=EXAMPLES / "person.jpg", keypoints=keypoints, cloth=CLOTH)
    assert got.image == want.content
    assert got.person_box == tuple(map(int, want.headers["x-person-box"].split(",")))
    assert client.tryon(person=EXAMPLES / "person.jpg", keypoints=KEYPOINTS, cloth=CLOTH).image == want.content
    assert client.tryon(**PERSON, cloth=CLOTH).person_box is None, "no photo, no box"
    batch = list(client.tryon_batch(person=EXAMPLES / "person.jpg", keypoints=KEYPOINTS, cloths=[CLOTH]))
    assert batch[0].person_box == got.person_box


def test_batch_yields_each_garment_in_order_and_a_bad_one_as_its_error(client, server):
    cloths = [CLOTH, b"not an image at all", MIRRORED]
    fields = parts(**PERSON) + [("cloth", (f"c{i}", content(c))) for i, c in enumerate(cloths)]
    want = raw(server, "/v1/tryon/batch", fields, headers={"Accept": "application/x-ndjson"})
    lines = [json.loads(line) for line in want.text.splitlines()]
    results = list(client.tryon_batch(**PERSON, cloths=cloths))
    assert [r.index for r in results] == [0, 1, 2]
    assert [r.ok for r in results] == [True, False, True]
    bad = results[1].error
    assert isinstance(bad, TryOnError) and (bad.status, bad.field) == (415, "cloth")
    assert bad.code == lines[1]["error"]["code"] and bad.message == lines[1]["error"]["message"]
    for result in (results[0], results[2]):
        assert result.image == base64.b64decode(lines[result.index]["image"])
        assert {"queue", "inference", "encode"} <= set(result.timings)
    with pytest.raises(TryOnError):
        results[1].save("/dev/null")


def test_prepare_gives_the_model_inputs_the_box_and_the_mask(client, server):
    fields = parts(person=EXAMPLES / "person.jpg", keypoints=KEYPOINTS, cloth=CLOTH)
    prepared = client.prepare(person=EXAMPLES / "person.jpg", keypoints=KEYPOINTS, cloth=CLOTH)
    assert prepared.size == (64, 64)
    for name in ("masked_model", "pose", "mask", "cloth"):
        assert getattr(prepared, name) == raw(server, "/v1/prepare", fields, params={"output": name}).content
    header = raw(server, "/v1/prepare", fields, params={"output": "pose"}).headers["x-person-box"]
    assert prepared.box == tuple(map(int, header.split(",")))
    given = client.prepare(**PERSON)
    assert (given.box, given.mask, given.cloth) == (None, None, None)


def test_refusals_raise_tryonerror_with_status_code_message_field(client, server):
    with pytest.raises(TryOnError) as missing:
        client.tryon(masked_model=PERSON["masked_model"], cloth=CLOTH)
    assert missing.value.status == 422 and "pose" in missing.value.field and missing.value.message
    with pytest.raises(TryOnError) as bad_image:
        client.tryon(**PERSON, cloth=b"text, not a picture")
    assert (bad_image.value.status, bad_image.value.field) == (415, "cloth")
    with TryOnClient(server.url, api_key="wrong") as stranger, pytest.raises(TryOnError) as unauthorized:
        stranger.tryon(**PERSON, cloth=CLOTH)
    assert (unauthorized.value.status, unauthorized.value.code) == (401, "unauthorized")
    with pytest.raises(TypeError, match="binary mode"):
        with open(KEYPOINTS) as text_file:
            client.tryon(**PERSON, cloth=text_file)


def test_async_client_gives_the_same_answers(server, reference):
    async def calls():
        async with AsyncTryOnClient(server.url, api_key=API_KEY) as tryon:
            single = await tryon.tryon(**PERSON, cloth=CLOTH)
            batch = [r async for r in tryon.tryon_batch(**PERSON, cloths=[CLOTH, CLOTH])]
            prepared = await tryon.prepare(**PERSON)
            with pytest.raises(TryOnError) as refused:
                await tryon.tryon(**PERSON, cloth=b"text")
            return single, batch, prepared, refused.value

    single, batch, prepared, refused = asyncio.run(calls())
    assert single.image == reference
    assert [r.index for r in batch] == [0, 1] and all(r.ok for r in batch)
    assert prepared.size == (64, 64) and prepared.pose.startswith(b"\x89PNG")
    assert refused.status == 415


def busy(seconds: str) -> tuple[int, dict, bytes]:
    return 503, {"Retry-After": seconds, "Content-Type": "application/json"}, json.dumps(
        {"error": {"code": "queue_full", "message": "the queue is full", "field": None}}).encode()


def test_503_is_retried_after_retry_after():
    with LocalServer({"/v1/tryon": [busy("1"), (200, {"Content-Type": "image/jpeg"}, b"\xff\xd8 an image")]}) as fake:
        started = time.monotonic()
        with TryOnClient(fake.base) as tryon:
            result = tryon.tryon(**PERSON, cloth=CLOTH)
        assert result.image == b"\xff\xd8 an image"
        assert time.monotonic() - started >= 1.0  # waited as the server asked
        assert [path for path, _ in fake.hits] == ["/v1/tryon", "/v1/tryon"]


def test_retries_are_bounded():
    with LocalServer({"/v1/tryon": busy("0"), "/v1/tryon/batch": busy("120")}) as fake:
        with TryOnClient(fake.base, retries=2, max_retry_wait=60) as tryon:
            with pytest.raises(TryOnError) as refused:
                tryon.tryon(**PERSON, cloth=CLOTH)
            assert (refused.value.status, refused.value.code, refused.value.retry_after) == (503, "queue_full", 0)
            assert len(fake.hits) == 3  # the first try and two retries
            # A server asking for longer than the client will wait: no retry, the wait it asked for is told.
            with pytest.raises(TryOnError) as later:
                list(tryon.tryon_batch(**PERSON, cloths=[CLOTH]))
            assert later.value.retry_after == 120 and len(fake.hits) == 4


def test_connection_errors_are_retried_then_raised():
    closed = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with TryOnClient(closed, retries=2) as tryon, pytest.raises(TryOnError) as unreachable:
        tryon.tryon(**PERSON, cloth=CLOTH)
    assert unreachable.value.status is None and unreachable.value.code == "unreachable"
    assert time.monotonic() - started >= 1.5  # backed off 0.5 s, then 1 s


def test_a_client_started_with_the_server_gets_its_answer(tmp_path, standin_weights_file, reference):
    """Connection refused while the model loads, then the answer: the retries cover a starting service."""
    process = ServerProcess({"TRYON_WEIGHTS": str(standin_weights_file), "TRYON_MAX_BATCH_SIZE": "1"}, tmp_path)
    try:
        with TryOnClient(process.url, retries=10) as tryon:  # 0.5 s doubling, then 30 s: up to 2.5 min
            assert tryon.tryon(**PERSON, cloth=CLOTH).image == reference
    finally:
        assert stop_process(process.process) == 0, process.stderr[-3000:]


def test_the_client_installs_with_httpx_alone():
    project = tomllib.loads((REPO / "client" / "pyproject.toml").read_text())["project"]
    assert (project["name"], project["dependencies"]) == ("tryon-client", ["httpx>=0.27"])
    loaded = subprocess.run([sys.executable, "-c", "import sys, tryon_client; "
                             "print(sorted({'torch', 'numpy', 'PIL'} & set(sys.modules)))"],
                            capture_output=True, text=True, check=True, cwd="/")
    assert loaded.stdout.strip() == "[]"
