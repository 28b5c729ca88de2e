"""The person-side inputs shops really have, through a real server over real HTTP:
photo + keypoints (+ parse) for /v1/tryon, /v1/prepare, and many garments
for one person through /v1/tryon/batch. Expected images come from the model
code itself (model.person.person_images and the network)."""
from __future__ import annotations

import base64
import concurrent.futures
import io
import json
import signal
import threading

import httpx
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from model import create_model, load_weights
from model.images import assemble_inputs, encode_image, output_image
from model.person.person_inputs import person_images
from service.settings import Settings
from tests.fixtures.service.harness import REPO, ServerProcess, fixture_bytes, running_server, sample_key

# @pytest.mark.isa: the tests whose numbers oneDNN or ATen compute, run again with both held
# to AVX2 (Makefile, test-avx2); the others compute nothing the instruction set can change.

PREP = REPO / "tests" / "fixtures" / "prep"
SIZE = (64, 64)
MAX_GARMENTS = 3
PERSON = (PREP / "front_person.png").read_bytes()
PARSE = (PREP / "front_parse.png").read_bytes()
POSE = (PREP / "front_pose.png").read_bytes()
MASKED = (PREP / "front_masked_model.png").read_bytes()
KEYPOINTS_TEXT = (PREP / "front_keypoints.json").read_text()
KEYPOINTS = json.loads(KEYPOINTS_TEXT)
CLOTH = fixture_bytes("cloth_64x64.png")


def png(img: Image.Image) -> bytes:
    return encode_image(img, "png")


def variant_cloths() -> list[bytes]:
    base = Image.open(io.BytesIO(CLOTH)).convert("RGB")
    return [CLOTH, png(ImageOps.mirror(base)), png(ImageOps.invert(base))]


CLOTHS = variant_cloths()


def pixels(body: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB"), dtype=np.int16)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def boundary_of(answer: httpx.Response) -> bytes:
    return answer.headers["content-type"].split("boundary=")[1].encode()


def parse_multipart(data: bytes, boundary: bytes) -> tuple[list[tuple[dict[str, str], bytes]], bool]:
    """The complete parts of (the start of) a multipart/mixed body, read by their
    Content-Length, and whether the closing boundary has arrived."""
    parts, at = [], 0
    while True:
        at = data.find(b"--" + boundary, at)
        if at < 0 or len(data) < at + len(boundary) + 4:
            return parts, False
        at += len(boundary) + 2
        if data[at:at + 2] == b"--":
            return parts, True
        head_end = data.find(b"\r\n\r\n", at)
        if head_end < 0:
            return parts, False
        headers = dict(line.split(": ", 1) for line in data[at + 2:head_end].decode().split("\r\n"))
        size = int(headers["Content-Length"])
        if len(data) < head_end + 4 + size:
            return parts, False
        parts.append((headers, data[head_end + 4:head_end + 4 + size]))
        at = head_end + 4 + size


def split_multipart(answer: httpx.Response) -> list[tuple[dict[str, str], bytes]]:
    """A whole multipart/mixed answer -> [(headers, body)]."""
    parts, complete = parse_multipart(answer.content, boundary_of(answer))
    assert complete, "the closing boundary is missing"
    return parts


@pytest.fixture(scope="module")
def server(tmp_path_factory, standin_weights_file):
    # Chunks of two garments, so a batch of three shows how a chunk's parts travel together.
    with running_server({"TRYON_WEIGHTS": str(standin_weights_file), "TRYON_MAX_BATCH_SIZE": "2",
                         "TRYON_GARMENT_CHUNK": "2", "TRYON_MAX_GARMENTS": str(MAX_GARMENTS)},
                        tmp_path_factory.mktemp("logs")) as proc:
        yield proc


@pytest.fixture(scope="module")
def network(standin_state):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the server shares the cores
    yield load_weights(create_model(sampler="torch"), standin_state)
    torch.set_num_threads(threads)


def expected_tryon(network, cloth: bytes = CLOTH, **person) -> np.ndarray:
    drawn = person_images(size_hw=SIZE, **person)
    inputs = assemble_inputs(drawn.masked_model, drawn.pose, drawn.frame, cloth)
    with torch.inference_mode():
        pose, masked_model, cloth = inputs.batch()
        out = network(torch.cat((pose, masked_model), dim=1), cloth, masked_model)
    return np.asarray(output_image(out[0]), dtype=np.int16)


def assert_same_image(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1  # float summation order may move a value across a rounding edge
    assert (got != want).mean() < 0.01


# Each mix in the three ways keypoints arrive: a multipart text field, a multipart file, a JSON value.
MIXES = [
    ("person+keypoints, keypoints as a text field", dict(person=PERSON, keypoints=KEYPOINTS_TEXT),
     lambda: dict(files={"person": ("p.png", PERSON, "image/png"), "cloth": ("c.png", CLOTH, "image/png")},
                  data={"keypoints": KEYPOINTS_TEXT})),
    ("person+keypoints+parse, keypoints as a file", dict(person=PERSON, keypoints=KEYPOINTS_TEXT, parse=PARSE),
     lambda: dict(files={"person": ("p.png", PERSON, "image/png"), "parse": ("s.png", PARSE, "image/png"),
                         "keypoints": ("k.json", KEYPOINTS_TEXT.encode(), "application/json"),
                         "cloth": ("c.png", CLOTH, "image/png")})),
    ("masked_model+keypoints, keypoints as a JSON object", dict(masked_model=MASKED, keypoints=KEYPOINTS),
     lambda: dict(json={"masked_model": b64(MASKED), "keypoints": KEYPOINTS, "cloth": b64(CLOTH)})),
    ("person+keypoints+pose, keypoints as a JSON string", dict(person=PERSON, keypoints=KEYPOINTS, pose=POSE),
     lambda: dict(json={"person": b64(PERSON), "pose": b64(POSE), "keypoints": KEYPOINTS_TEXT,
                        "cloth": b64(CLOTH)})),
    ("keypoints as a JSON list of triples", dict(person=PERSON, keypoints=KEYPOINTS),
     lambda: dict(json={"person": b64(PERSON), "cloth": b64(CLOTH),
                        "keypoints": np.reshape(KEYPOINTS["people"][0]["pose_keypoints"], (18, 3)).tolist()})),
]


@pytest.mark.isa
@pytest.mark.parametrize("name, person, request_kwargs", MIXES, ids=[m[0] for m in MIXES])
def test_tryon_input_mixes_equal_model_code(client, network, name, person, request_kwargs):
    answer = client.post("/v1/tryon", params={"format": "png"}, **request_kwargs())
    assert answer.status_code == 200, answer.text
    assert_same_image(pixels(answer.content), expected_tryon(network, **person))


@pytest.mark.parametrize("kwargs, code, fields", [
    (dict(files={"pose": ("p.png", POSE, "image/png"), "cloth": ("c.png", CLOTH, "image/png")}),
     "incomplete_inputs", "masked_model,person"),
    (dict(json={"masked_model": b64(MASKED), "cloth": b64(CLOTH)}), "incomplete_inputs", "pose,keypoints"),
    (dict(json={"masked_model": b64(MASKED), "pose": b64(POSE), "keypoints": KEYPOINTS, "cloth": b64(CLOTH)}),
     "ambiguous_inputs", "keypoints"),
    (dict(files={"masked_model": ("m.png", MASKED, "image/png"), "pose": ("p.png", POSE, "image/png"),
                 "person": ("q.png", PERSON, "image/png"), "cloth": ("c.png", CLOTH, "image/png")}),
     "ambiguous_inputs", "person"),
], ids=["pose alone", "masked model alone", "keypoints besides both images", "person besides both images"])
def test_incomplete_or_ambiguous_mix_is_422_naming_the_fields(client, kwargs, code, fields):
    answer = client.post("/v1/tryon", **kwargs)
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["code"] == code and error["field"] == fields
    assert all(f in error["message"] for f in fields.split(","))


PREPARE_FILES = {"person": ("p.png", PERSON, "image/png"), "parse": ("s.png", PARSE, "image/png"),
                 "keypoints": ("k.json", KEYPOINTS_TEXT.encode(), "application/json")}


@pytest.fixture(scope="module")
def prepared():
    """What the model code draws for the photo, parse map and keypoints."""
    return person_images(person=PERSON, parse=PARSE, keypoints=KEYPOINTS_TEXT, size_hw=SIZE)


@pytest.mark.isa
@pytest.mark.parametrize("output", ["pose", "masked_model"])
def test_prepare_one_image_is_exactly_the_model_input(client, prepared, output):
    answer = client.post("/v1/prepare", params={"output": output}, files=PREPARE_FILES)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "image/png" and answer.headers["x-image-size"] == "64x64"
    assert np.array_equal(pixels(answer.content), pixels(png(getattr(prepared, output))))


def mask_png(person) -> bytes:
    return png(Image.fromarray(person.mask.numpy(), mode="L"))


@pytest.mark.isa
def test_prepare_both_as_multipart_and_as_json(client, prepared):
    want = {name: pixels(png(getattr(prepared, name))) for name in ("masked_model", "pose")}
    want["mask"] = pixels(mask_png(prepared))
    multipart = client.post("/v1/prepare", files=PREPARE_FILES)
    assert multipart.status_code == 200, multipart.text
    assert multipart.headers["content-type"].startswith("multipart/mixed; boundary=")
    assert multipart.headers["x-person-box"] == ",".join(map(str, prepared.box))
    parts = split_multipart(multipart)
    names = [headers["Content-Disposition"].split('name="')[1].rstrip('"') for headers, _ in parts]
    assert names == ["masked_model", "pose", "mask"]
    for (headers, body), name in zip(parts, names):
        assert headers["Content-Type"] == "image/png"
        assert np.array_equal(pixels(body), want[name])

    as_json = client.post("/v1/prepare", headers={"Accept": "application/json"},
                          json={"person": b64(PERSON), "parse": b64(PARSE), "keypoints": KEYPOINTS})
    assert as_json.status_code == 200 and as_json.headers["content-type"] == "application/json"
    document = as_json.json()
    assert document["size"] == [64, 64] and document["media_type"] == "image/png"
    assert document["box"] == list(prepared.box)
    for name in want:
        assert np.array_equal(pixels(base64.b64decode(document[name])), want[name])


@pytest.mark.isa
def test_prepare_shows_the_garment_as_placed_and_the_mask_alone(client, prepared):
    """The three model inputs and the composite mask, each on its own; what has none says so."""
    cloth = client.post("/v1/prepare", params={"output": "cloth"}, files={**PREPARE_FILES,
                                                                          "cloth": ("c.png", CLOTH, "image/png")})
    assert cloth.status_code == 200, cloth.text
    placed = assemble_inputs(prepared.masked_model_levels, prepared.pose_levels, prepared.frame, CLOTH).cloth
    assert np.array_equal(pixels(cloth.content), pixels(png(output_image(placed))))
    mask = client.post("/v1/prepare", params={"output": "mask"}, files=PREPARE_FILES)
    assert mask.status_code == 200 and Image.open(io.BytesIO(mask.content)).mode == "L"
    assert np.array_equal(pixels(mask.content), pixels(mask_png(prepared)))
    no_cloth = client.post("/v1/prepare", params={"output": "cloth"}, files=PREPARE_FILES)
    assert no_cloth.status_code == 422 and no_cloth.json()["error"]["field"] == "cloth"
    no_photo = client.post("/v1/prepare", params={"output": "mask"},
                           files={"masked_model": ("m.png", MASKED, "image/png"), "pose": ("p.png", POSE, "image/png")})
    assert no_photo.status_code == 422 and no_photo.json()["error"]["code"] == "no_mask"
    assert "x-person-box" not in no_photo.headers


def test_prepare_refuses_an_incomplete_mix(client):
    answer = client.post("/v1/prepare", files={"parse": ("s.png", PARSE, "image/png")})
    assert answer.status_code == 422 and answer.json()["error"]["field"] == "person"


@pytest.fixture(scope="module")
def single_results(client):
    """Each garment through /v1/tryon alone, as PNG: what the batch must give for it."""
    results = []
    for cloth in CLOTHS:
        answer = client.post("/v1/tryon", params={"format": "png"}, data={"keypoints": KEYPOINTS_TEXT},
                             files={"person": ("p.png", PERSON, "image/png"), "cloth": ("c.png", cloth, "image/png")})
        assert answer.status_code == 200, answer.text
        results.append(pixels(answer.content))
    return results


def batch_files(cloths: list[bytes]) -> list:
    return [("person", ("p.png", PERSON, "image/png"))] + [("cloth", (f"c{i}.png", c, "image/png"))
                                                          for i, c in enumerate(cloths)]


@pytest.mark.isa
def test_batch_streams_each_garment_as_the_single_request_gives_it(server, client, single_results):
    before = server.metrics()
    with client.stream("POST", "/v1/tryon/batch", params={"format": "png"}, files=batch_files(CLOTHS),
                       data={"keypoints": KEYPOINTS_TEXT}) as answer:
        assert answer.status_code == 200
        assert "content-length" not in answer.headers  # streamed, part by part
        answer.read()
    assert answer.headers["x-garments"] == "3" and answer.headers["x-batch-size"] == "3"
    # TRYON_GARMENT_CHUNK=2: two garments per engine call.
    assert answer.headers["x-garment-chunk"] == "2"
    # Headers go first: queue time is known then, inference time only per part.
    assert "queue;dur=" in answer.headers["server-timing"]
    assert "inference;dur=" not in answer.headers["server-timing"]
    parts = split_multipart(answer)
    assert [int(headers["X-Index"]) for headers, _ in parts] == [0, 1, 2]
    for (headers, body), want in zip(parts, single_results):
        assert headers["Content-Type"] == "image/png"
        assert float(headers["X-Inference-Ms"]) > 0 and float(headers["X-Encode-Ms"]) > 0
        assert_same_image(pixels(body), want)
    # Garments 0 and 1 came out of one engine call: the same chunk time.
    assert parts[0][0]["X-Inference-Ms"] == parts[1][0]["X-Inference-Ms"]
    # One engine job for the three garments, counted like any request, run as two chunks (2 + 1).
    after = server.metrics()
    delta = {name: after[sample_key(name)] - before[sample_key(name)]
             for name in ("tryon_batch_size_count", "tryon_batch_size_sum", "tryon_inference_seconds_count")}
    assert delta == {"tryon_batch_size_count": 1, "tryon_batch_size_sum": 3, "tryon_inference_seconds_count": 2}
    route = {"route": "/v1/tryon/batch", "method": "POST", "status": "200"}
    key = sample_key("tryon_http_requests_total", route)
    assert after[key] - before.get(key, 0.0) == 1


@pytest.mark.isa
def test_batch_as_ndjson_from_a_json_body(client, single_results):
    body = {"person": b64(PERSON), "keypoints": KEYPOINTS, "cloths": [b64(c) for c in CLOTHS], "format": "png"}
    answer = client.post("/v1/tryon/batch", json=body, headers={"Accept": "application/x-ndjson"})
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in answer.text.splitlines()]
    assert [line["index"] for line in lines] == [0, 1, 2]
    for line, want in zip(lines, single_results):
        assert line["status"] == 200 and line["media_type"] == "image/png"
        assert line["inference_ms"] > 0 and line["encode_ms"] > 0
        assert_same_image(pixels(base64.b64decode(line["image"])), want)


@pytest.mark.isa
def test_batch_survives_a_bad_garment(client, single_results):
    cloths = [CLOTHS[0], b"not an image at all", CLOTHS[2]]
    answer = client.post("/v1/tryon/batch", params={"format": "png"}, files=batch_files(cloths),
                         data={"keypoints": KEYPOINTS_TEXT})
    assert answer.status_code == 200, answer.text
    parts = split_multipart(answer)
    assert [headers.get("X-Status", "200") for headers, _ in parts] == ["200", "415", "200"]
    bad_headers, bad_body = parts[1]
    assert bad_headers["Content-Type"] == "application/json" and bad_headers["X-Index"] == "1"
    assert json.loads(bad_body)["error"]["code"] == "not_an_image"
    assert_same_image(pixels(parts[0][1]), single_results[0])
    assert_same_image(pixels(parts[2][1]), single_results[2])


def test_batch_composites_every_garment_into_the_photo_as_tryon_does(client):
    """size=original: the person framed once, each garment's result put into the photo as /v1/tryon
    puts it, at the photo's size. The same picture within a level, not the same bytes: a garment run in a
    chunk of two may round a value differently from one run alone (or one a test before left in the cache)."""
    fields = {"keypoints": KEYPOINTS_TEXT, "size": "original"}
    answer = client.post("/v1/tryon/batch", params={"format": "png"}, files=batch_files(CLOTHS[:2]), data=fields)
    assert answer.status_code == 200, answer.text
    box = answer.headers["x-person-box"]
    for index, (headers, body) in enumerate(split_multipart(answer)):
        single = client.post("/v1/tryon", params={"format": "png"}, data=fields,
                             files={"person": ("p.png", PERSON, "image/png"),
                                    "cloth": ("c.png", CLOTHS[index], "image/png")})
        assert single.headers["x-person-box"] == box
        assert Image.open(io.BytesIO(body)).size == (192, 256)
        assert_same_image(pixels(body), pixels(single.content))


def test_garment_chunk_setting():
    auto = Settings(max_batch_size=8)
    assert (auto.garment_chunk_for("cuda"), auto.garment_chunk_for("cpu")) == (8, 1)
    assert Settings(max_batch_size=1).garment_chunk_for("cpu") == 1
    assert Settings(max_batch_size=4, garment_chunk=3).garment_chunk_for("cuda") == 3
    assert Settings(max_batch_size=4, garment_chunk=16).garment_chunk_for("cpu") == 4


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory, standin_weights_file):
    """The published size (a second or more per garment on this CPU), one garment per chunk. A long request
    deadline: on a loaded machine admission control would refuse three garments as never done in 30 s."""
    with running_server({"TRYON_WEIGHTS": str(standin_weights_file), "TRYON_IMAGE_SIZE": "256x192",
                         "TRYON_MAX_BATCH_SIZE": "2", "TRYON_GARMENT_CHUNK": "1", "TRYON_MAX_GARMENTS": "3",
                         "TRYON_REQUEST_TIMEOUT_S": "300"},
                        tmp_path_factory.mktemp("logs")) as proc:
        yield proc


ENGINE_CALLS = sample_key("tryon_inference_seconds_count")


def stream_batch(server: ServerProcess, until_parts: int | None = None) -> tuple[list, float, bool]:
    """Posts the three garments and reads the answer as it comes: the parts, the server's
    engine calls made by the time the first part was read, and whether the answer was
    complete. Stops reading after ``until_parts`` parts."""
    before = server.metrics()[ENGINE_CALLS]
    data, calls_at_first_part, parts, complete = b"", None, [], False
    with httpx.Client(timeout=120) as client, client.stream(
            "POST", f"{server.url}/v1/tryon/batch", files=batch_files(CLOTHS),
            data={"keypoints": KEYPOINTS_TEXT}) as answer:
        assert answer.status_code == 200, answer.read().decode(errors="replace")
        assert answer.headers["x-garment-chunk"] == "1"
        for piece in answer.iter_raw():
            data += piece
            parts, complete = parse_multipart(data, boundary_of(answer))
            if parts and calls_at_first_part is None:
                calls_at_first_part = server.metrics()[ENGINE_CALLS] - before
            if until_parts is not None and len(parts) >= until_parts:
                break
    return parts, calls_at_first_part, complete


def test_batch_sends_each_part_as_soon_as_its_chunk_is_done(slow_server):
    """The first part reaches the client before the last chunk has been computed, which
    the server's count of engine calls shows at the moment the part is read."""
    before = slow_server.metrics()[ENGINE_CALLS]
    parts, calls_at_first_part, complete = stream_batch(slow_server)
    assert complete and [int(headers["X-Index"]) for headers, _ in parts] == [0, 1, 2]
    assert calls_at_first_part < 3, "the first part waited for the last chunk"
    assert slow_server.metrics()[ENGINE_CALLS] - before == 3


def test_batch_stops_after_the_current_chunk_when_the_client_goes(slow_server):
    """A client that hangs up after the first part: the chunk under way finishes, the last
    one is never run, and the worker goes on to the next request."""
    before = slow_server.metrics()[ENGINE_CALLS]
    parts, calls_at_first_part, complete = stream_batch(slow_server, until_parts=1)
    assert len(parts) == 1 and not complete and calls_at_first_part < 3
    single = httpx.post(f"{slow_server.url}/v1/tryon", data={"keypoints": KEYPOINTS_TEXT}, timeout=120,
                        files={"person": ("p.png", PERSON, "image/png"), "cloth": ("c.png", CLOTH, "image/png")})
    assert single.status_code == 200, single.text
    # The single request ran after the garments ``Work`` ended (one worker): two chunks and itself.
    assert slow_server.metrics()[ENGINE_CALLS] - before == 3


def test_batch_refuses_too_many_garments(client):
    many = CLOTHS + [CLOTH]
    multipart = client.post("/v1/tryon/batch", files=batch_files(many), data={"keypoints": KEYPOINTS_TEXT})
    as_json = client.post("/v1/tryon/batch", json={"person": b64(PERSON), "keypoints": KEYPOINTS,
                                                   "cloths": [b64(c) for c in many]})
    for answer in (multipart, as_json):
        assert answer.status_code == 413, answer.text
        error = answer.json()["error"]
        assert error["code"] == "too_many_garments" and str(MAX_GARMENTS) in error["message"]


def _points(rows) -> dict:
    return {"people": [{"pose_keypoints_2d": [v for row in rows for v in row]}]}


TRIPLES = np.reshape(KEYPOINTS["people"][0]["pose_keypoints"], (18, 3)).tolist()
BAD_KEYPOINTS = [
    ("wrong length", json.dumps(_points(TRIPLES[:10])), "has 10 points"),
    ("not numbers", json.dumps([["a", "b", 1]] + TRIPLES[1:]), "is not a number"),
    ("NaN", json.dumps([[float("nan"), 10.0, 0.9]] + TRIPLES[1:]), "NaN"),
    ("far outside", json.dumps([[5000.0, 40.0, 0.9]] + TRIPLES[1:]), "far outside"),
    ("not JSON", "{people: ", "not valid JSON"),
]


@pytest.mark.parametrize("name, text, problem", BAD_KEYPOINTS, ids=[b[0] for b in BAD_KEYPOINTS])
def test_bad_keypoints_are_422_naming_the_problem(client, name, text, problem):
    answer = client.post("/v1/tryon", data={"keypoints": text},
                         files={"person": ("p.png", PERSON, "image/png"), "cloth": ("c.png", CLOTH, "image/png")})
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["code"] == "invalid_keypoints" and error["field"] == "keypoints"
    assert problem in error["message"]
    # The server is none the worse: the next good request is served.
    good = client.post("/v1/prepare", params={"output": "pose"}, data={"keypoints": KEYPOINTS_TEXT},
                       files={"person": ("p.png", PERSON, "image/png")})
    assert good.status_code == 200 and good.headers["content-type"] == "image/png"


def test_batch_jobs_respect_the_queue_limit_and_drain_on_sigterm(tmp_path, standin_weights_file):
    """A batch is one ``Work`` in the same queue: with a queue limit of 1, a batch running and a
    batch waiting, a third request is refused at once; SIGTERM lets both batches finish."""
    # The published size, so a chunk (one garment on a CPU) runs for a second or more on this CPU: the
    # first batch's four keep the worker busy while the second queues behind the chunk under way.
    proc = ServerProcess({"TRYON_WEIGHTS": str(standin_weights_file), "TRYON_IMAGE_SIZE": "256x192",
                          "TRYON_MAX_BATCH_SIZE": "2", "TRYON_MAX_GARMENTS": "4", "TRYON_QUEUE_LIMIT": "1",
                          "TRYON_REQUEST_TIMEOUT_S": "300"}, tmp_path)  # (a long deadline: as slow_server's)
    try:
        proc.wait_ready()
        first_files, files = batch_files(CLOTHS + [CLOTH]), batch_files(CLOTHS[:2])

        def post(files: list, started: threading.Event | None = None) -> httpx.Response:
            with httpx.Client(timeout=120) as client, client.stream(
                    "POST", f"{proc.url}/v1/tryon/batch", files=files, data={"keypoints": KEYPOINTS_TEXT}) as answer:
                if started is not None:
                    started.set()  # the head comes once the first chunk has run: the job is on the worker
                answer.read()
            return answer
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            started = threading.Event()
            running = pool.submit(post, first_files, started)
            assert started.wait(60), "the first batch never started"
            waiting = pool.submit(post, files)  # behind the first batch's chunk under way
            assert proc.wait_metric("tryon_queue_depth", {}, 1, timeout=30) == 1
            refused = post(files)
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "queue_full", refused.text
            assert refused.headers["retry-after"]
            proc.process.send_signal(signal.SIGTERM)
            for answer, garments in ((running.result(), 4), (waiting.result(), 2)):
                assert answer.status_code == 200, answer.text
                assert [h.get("X-Status", "200") for h, _ in split_multipart(answer)] == ["200"] * garments
        assert proc.process.wait(60) == 0
    finally:
        proc.stop()



DEEP = "[" * 100_000
# (name, request kwargs without the route's own images, status, code, field)
HOSTILE_JSON = [
    ("nested body", dict(content=DEEP.encode(), headers={"Content-Type": "application/json"}), 422, "json_too_deep",
     None),
    ("nested keypoints file", dict(files={"keypoints": ("k.json", DEEP.encode(), "application/json")}), 422,
     "json_too_deep", "keypoints"),
    ("nested keypoints in a JSON string", dict(json={"keypoints": DEEP}), 422, "json_too_deep", "keypoints"),
    ("NaN literal in keypoints", dict(data={"keypoints": json.dumps(TRIPLES).replace("[", "[NaN, ", 1)}), 422,
     "invalid_keypoints", "keypoints"),
    ("5,000-digit integer in keypoints", dict(data={"keypoints": "[" + "9" * 5000 + "]"}), 422, "invalid_keypoints",
     "keypoints"),
    ("key twice in keypoints", dict(data={"keypoints": '{"people": [], "people": []}'}), 422, "duplicate_field",
     "keypoints"),
    ("keypoints part twice", dict(files=[("keypoints", ("a.json", KEYPOINTS_TEXT.encode(), "application/json")),
                                         ("keypoints", ("b.json", KEYPOINTS_TEXT.encode(), "application/json"))]),
     422, "duplicate_field", "keypoints"),
    ("a million values in a keypoints file", dict(files={"keypoints": ("k.json", b"[" + b"0," * 600_000 + b"0]",
                                                                       "application/json")}),
     413, "json_too_large", "keypoints"),
]


def _with_person(route: str, kwargs: dict) -> dict:
    """The hostile part plus the person photo (and a garment where the route takes one)."""
    own = [("person", ("p.png", PERSON, "image/png"))] + ([] if route == "/v1/prepare" else
                                                          [("cloth", ("c.png", CLOTH, "image/png"))])
    if "json" in kwargs:
        fields = {name: b64(data) for name, (_, data, _) in own}
        if route == "/v1/tryon/batch":
            fields["cloths"] = [fields.pop("cloth")]
        return {"json": fields | kwargs["json"]}
    if "content" in kwargs:
        return kwargs
    files = kwargs.get("files", {})
    return {"files": own + (list(files.items()) if isinstance(files, dict) else files),
            "data": kwargs.get("data", {})}


@pytest.mark.parametrize("route", ["/v1/tryon", "/v1/prepare", "/v1/tryon/batch"])
@pytest.mark.parametrize("name, kwargs, status, code, field", HOSTILE_JSON, ids=[h[0] for h in HOSTILE_JSON])
def test_hostile_json_is_a_4xx_naming_the_field_on_every_route(client, route, name, kwargs, status, code, field):
    answer = client.post(route, **_with_person(route, kwargs))
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert (error["code"], error["field"]) == (code, field)
    assert error["message"]
