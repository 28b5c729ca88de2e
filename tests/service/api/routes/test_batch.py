"""Many garments for one person through /v1/tryon/batch, a real server over real HTTP: each garment
as /v1/tryon gives it alone, streamed part by part (multipart or NDJSON), a bad garment as its own
error, the client going, the garment limit, and the queue limit and SIGTERM drain."""
from __future__ import annotations

import base64
import concurrent.futures
import io
import json
import signal
import threading

import httpx
import pytest
from PIL import Image, ImageOps

from tests.fixtures.service.harness import ServerProcess, running_server, sample_key
from tests.utils.front_person import (CLOTH, KEYPOINTS, KEYPOINTS_TEXT, MAX_GARMENTS, PERSON, assert_same_image,
                                      b64, boundary_of, parse_multipart, pixels, png, split_multipart)

# @pytest.mark.isa: the tests whose numbers oneDNN or ATen compute, run again with both held
# to AVX2 (Makefile, test-avx2); the others compute nothing the instruction set can change.


def variant_cloths() -> list[bytes]:
    base = Image.open(io.BytesIO(CLOTH)).convert("RGB")
    return [CLOTH, png(ImageOps.mirror(base)), png(ImageOps.invert(base))]


CLOTHS = variant_cloths()


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
