"""POST /v1/tryon through a real server process over real HTTP: every input
form, every output format, golden outputs, batching, bad inputs, SSRF, keys; each
check against one process, then against TRYON_WORKERS=2 (two front-end processes
feeding one engine process: responses, errors, headers, golden outputs, batching,
metrics and logs must not change)."""
from __future__ import annotations

import base64
import concurrent.futures
import io
import json
import time

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from model import create_model, load_weights
from model.images import encode_image, output_image, prepare_inputs, psnr
from service.api.options import MIN_TIMEOUT_S
from tests.utils import load_golden
from tests.utils.local_http import LocalServer
from tests.fixtures.service.harness import (REPO, TRYON_IMAGES, ConnectionRecorder, post_files, running_server,
                                            sample_key)

# @pytest.mark.isa: the tests whose numbers oneDNN or ATen compute, run again with both held
# to AVX2 (Makefile, test-avx2); the others compute nothing the instruction set can change.

API_KEY, OTHER_KEY = "test-key-1", "test-key-2"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
ORIGIN = "https://shop.example"
MAX_UPLOAD = 200_000
MAX_PIXELS = 1_000_000
IMAGES = TRYON_IMAGES
EXAMPLES = {name: (REPO / "service" / "examples" / f"{name}.png").read_bytes()
            for name in ("masked_model", "pose", "cloth")}


def png_of_size(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 10, 10)).save(buf, "PNG")
    return buf.getvalue()


def decoded(body: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="module")
def image_server():
    not_png = b"this is text, not an image"
    server = LocalServer({
        **{f"/{name}.png": (200, {"Content-Type": "image/png"}, data) for name, data in IMAGES.items()},
        "/text.txt": (200, {"Content-Type": "text/plain"}, not_png),
        "/huge.png": (200, {"Content-Type": "image/png"}, b"\x89PNG" + b"0" * (MAX_UPLOAD + 10)),
        "/slow.png": (200, {"delay": "3"}, IMAGES["pose"]),
    })
    server.routes["/hop1"] = (302, {"Location": "/hop2"}, b"")
    server.routes["/hop2"] = (302, {"Location": f"{server.base}/pose.png"}, b"")
    server.routes["/loop"] = (302, {"Location": "/loop"}, b"")
    yield server
    server.close()


@pytest.fixture(scope="module")
def recorder():
    listener = ConnectionRecorder()
    yield listener
    listener.close()


@pytest.fixture(scope="module", params=[1, 2], ids=["one-process", "two-front-ends"])
def front_ends(request) -> int:
    return request.param


@pytest.fixture(scope="module")
def server(tmp_path_factory, standin_weights_file, image_server, recorder, front_ends):
    decoy_port = str(recorder.port)  # the environment's port, which --port must override
    with running_server({
        "TRYON_WORKERS": str(front_ends), "TRYON_PORT": decoy_port, "TRYON_WEIGHTS": str(standin_weights_file),
        "TRYON_MAX_BATCH_SIZE": "4", "TRYON_MAX_BATCH_WAIT_MS": "150",
        "TRYON_URL_ALLOW_HOSTS": f"127.0.0.1:{image_server.port},localhost:{image_server.port}", "TRYON_API_KEYS": f"{API_KEY},{OTHER_KEY}",
        "TRYON_CORS_ORIGINS": ORIGIN, "TRYON_MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
        "TRYON_MAX_IMAGE_PIXELS": str(MAX_PIXELS), "TRYON_URL_MAX_BYTES": str(MAX_UPLOAD),
        "TRYON_URL_READ_TIMEOUT_S": "1", "TRYON_URL_TOTAL_TIMEOUT_S": "2",
    }, tmp_path_factory.mktemp("logs")) as proc:
        yield proc


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def network(standin_state):
    # One thread: the test process shares the cores with the server, and two spinning
    # OpenMP threads on a busy machine make a 64x64 forward 40 times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_weights(create_model(sampler="torch"), standin_state)
    torch.set_num_threads(threads)


def expected(network, images: dict, size: str = "model") -> np.ndarray:
    """What the model code gives for the same bytes: the golden check through HTTP."""
    inputs = prepare_inputs(images["masked_model"], images["pose"], images["cloth"], size_hw=(64, 64))
    with torch.inference_mode():
        pose, masked_model, cloth = inputs.batch()
        out = network(torch.cat((pose, masked_model), dim=1), cloth, masked_model)
    return np.asarray(output_image(out[0], inputs.person_frame, size), dtype=np.int16)


def test_ready_and_flags_override_environment(server, recorder):
    info = httpx.get(f"{server.url}/readyz").json()
    assert info["status"] == "ready" and info["device"] == "cpu" and info["precision"] == "fp32"
    assert info["weights"] == "standin.safetensors" and info["random_weights"] is False
    assert info["max_batch_size"] == 4 and info["batch_sizes"] == [1, 2, 3, 4] and info["image_size"] == [64, 64]
    assert info["weights_sha256"] and len(info["weights_sha256"]) == 64
    assert recorder.accepted == 0  # nothing listens on TRYON_PORT: --port won


@pytest.mark.isa
def test_multipart_png_equals_model_code(client, network):
    answer = post_files(client, params={"format": "png"}, headers={"X-Request-ID": "shop-42"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "image/png"
    assert answer.headers["x-request-id"] == "shop-42"
    assert answer.headers["x-weights"] == "standin.safetensors"
    timing = answer.headers["server-timing"]
    assert all(f"{part};dur=" in timing for part in ("decode", "queue", "inference", "encode"))
    got, want = decoded(answer.content), expected(network, IMAGES)
    assert got.shape == (64, 64, 3)
    assert np.abs(got - want).max() <= 1  # float summation order may move a value across a rounding edge
    assert (got != want).mean() < 0.01
    # And close to the stored golden output (its inputs were floats, these went through 8-bit PNGs).
    golden = load_golden("golden_64x64.pt")["tryon"][0]
    golden_img = np.asarray(output_image(golden), dtype=np.int16)
    assert np.abs(got - golden_img).mean() < 4


@pytest.mark.isa
@pytest.mark.parametrize("fmt, media", [("jpeg", "image/jpeg"), ("webp", "image/webp"), ("png", "image/png")])
def test_each_output_format(client, network, fmt, media):
    answer = post_files(client, params={"format": fmt, "quality": 95})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == media
    assert Image.open(io.BytesIO(answer.content)).format == {"jpeg": "JPEG", "webp": "WEBP", "png": "PNG"}[fmt]
    want, got = expected(network, IMAGES), decoded(answer.content)
    if fmt == "png":  # lossless: only float rounding may move a value across an 8-bit edge
        assert np.abs(got - want).max() <= 1
        return
    # Lossy: the server's bytes may lose no more than the codec itself loses on the same
    # pixels. A re-encode is not compared bit for bit: one 8-bit step of float rounding
    # (which differs between instruction sets) moves a whole JPEG block.
    codec_alone = decoded(encode_image(Image.fromarray(want.astype(np.uint8)), fmt, 95))
    assert psnr(got, want) >= psnr(codec_alone, want) - 1.0


def test_default_is_jpeg(client):
    answer = post_files(client)
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/jpeg"
    assert answer.content[:3] == b"\xff\xd8\xff"


@pytest.mark.isa
def test_json_base64_equals_model_code(client, network):
    body = {name: base64.b64encode(data).decode() for name, data in IMAGES.items()}
    body["cloth"] = "data:image/png;base64," + body["cloth"]
    answer = client.post("/v1/tryon", json=body | {"format": "png"})
    assert answer.status_code == 200, answer.text
    assert np.abs(decoded(answer.content) - expected(network, IMAGES)).max() <= 1


@pytest.mark.isa
def test_url_fields_and_redirects(client, network, image_server):
    data = {"masked_model": f"{image_server.base}/masked_model.png", "pose": f"{image_server.base}/hop1",
            "cloth": f"{image_server.base}/cloth.png", "format": "png"}
    # As multipart text fields (no file name): an unknown field to force multipart would be refused now.
    answer = client.post("/v1/tryon", files={name: (None, value) for name, value in data.items()})
    assert answer.status_code == 200, answer.text
    assert "fetch;dur=" in answer.headers["server-timing"]
    assert np.abs(decoded(answer.content) - expected(network, IMAGES)).max() <= 1


@pytest.mark.isa
def test_url_by_name_connects_to_the_checked_address_with_its_host(client, network, image_server):
    """The name is resolved once, by the service; the connection goes to that IP with the original Host."""
    url = f"http://localhost:{image_server.port}/cloth.png?by-name"
    image_server.routes["/cloth.png?by-name"] = image_server.routes["/cloth.png"]
    answer = post_files(client, images={k: v for k, v in IMAGES.items() if k != "cloth"}, data={"cloth": url},
                        params={"format": "png"})
    assert answer.status_code == 200, answer.text
    assert ("/cloth.png?by-name", f"localhost:{image_server.port}") in image_server.hits
    assert np.abs(decoded(answer.content) - expected(network, IMAGES)).max() <= 1


@pytest.mark.isa
def test_mixed_inputs(client, network, image_server):
    multipart = client.post("/v1/tryon", data={"pose": f"{image_server.base}/pose.png", "format": "png"},
                            files={"masked_model": ("m.png", IMAGES["masked_model"], "image/png"),
                                   "cloth": ("c.png", IMAGES["cloth"], "application/octet-stream")})
    as_json = client.post("/v1/tryon", json={"masked_model": base64.b64encode(IMAGES["masked_model"]).decode(),
                                             "pose": f"{image_server.base}/pose.png",
                                             "cloth": f"{image_server.base}/cloth.png", "format": "png"})
    want = expected(network, IMAGES)
    for answer in (multipart, as_json):
        assert answer.status_code == 200, answer.text
        assert np.abs(decoded(answer.content) - want).max() <= 1


@pytest.mark.isa
def test_original_size_output(client, network):
    answer = post_files(client, images=EXAMPLES, params={"format": "png", "size": "original"})
    assert answer.status_code == 200, answer.text
    got = decoded(answer.content)
    assert got.shape == (256, 192, 3)  # the person photo's own size, not the model's 64x64
    assert np.abs(got - expected(network, EXAMPLES, "original")).max() <= 2


def test_concurrent_requests_form_batches(server, client):
    before = server.metrics()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: post_files(client), range(8)))
    assert [a.status_code for a in answers] == [200] * 8, [a.text for a in answers if a.status_code != 200]
    assert max(int(a.headers["x-batch-size"]) for a in answers) > 1
    after = server.metrics()
    batches = after[sample_key("tryon_batch_size_count")] - before[sample_key("tryon_batch_size_count")]
    items = after[sample_key("tryon_batch_size_sum")] - before[sample_key("tryon_batch_size_sum")]
    singles = (after[sample_key("tryon_batch_size_bucket", {"le": "1.0"})]
               - before[sample_key("tryon_batch_size_bucket", {"le": "1.0"})])
    assert items == 8 and batches < 8 and singles < batches


JSON = {"Content-Type": "application/json"}


def _bad_cases(base: str) -> list:
    good = {n: (f"{n}.png", d, "image/png") for n, d in IMAGES.items()}
    truncated = IMAGES["cloth"][: len(IMAGES["cloth"]) // 2]
    return [
        ("not an image", dict(files=good | {"pose": ("p.png", b"just text", "image/png")}), 415, "not_an_image", "pose"),
        ("empty file", dict(files=good | {"cloth": ("c.png", b"", "image/png")}), 415, "not_an_image", "cloth"),
        ("truncated png", dict(files=good | {"cloth": ("c.png", truncated, "image/png")}), 415, "not_an_image",
         "cloth"),
        ("too many bytes", dict(files=good | {"cloth": ("c.png", b"\x89PNG" + bytes(MAX_UPLOAD), "image/png")}),
         413, "image_too_large", "cloth"),
        ("too many pixels", dict(files=good | {"masked_model": ("m.png", png_of_size(1200, 1000), "image/png")}),
         413, "image_too_large", "masked_model"),
        ("body too large", dict(files=good | {"cloth": ("c.png", bytes(5 * MAX_UPLOAD), "image/png")}),
         413, "payload_too_large", None),
        ("missing field", dict(files={k: v for k, v in good.items() if k != "cloth"}), 422, "missing_field", "cloth"),
        ("text field not a url", dict(files=good, data={"pose": "hello"}), 422, "invalid_field", "pose"),
        ("bad format option", dict(files=good, data={"format": "gif"}), 422, "invalid_option", "format"),
        ("bad query option", dict(files=good, params={"quality": 0}), 422, "invalid_request", "quality"),
        ("invalid json", dict(content=b"{nope", headers={"Content-Type": "application/json"}), 400, "invalid_json",
         None),
        ("wrong content type", dict(content=b"hello", headers={"Content-Type": "text/plain"}), 415,
         "unsupported_media_type", None),
        ("bad base64", dict(json={"masked_model": "%%%", "pose": "x", "cloth": "y"}), 422, "invalid_base64",
         "masked_model"),
        ("ftp url", dict(json={"masked_model": "ftp://example.com/a.png", "pose": "x", "cloth": "y"}), 422,
         "invalid_url", "masked_model"),
        ("upstream 404", dict(files=good, data={"pose": f"{base}/missing.png"}), 502, "upstream_error", "pose"),
        ("upstream slow", dict(files=good, data={"cloth": f"{base}/slow.png"}), 504, "upstream_timeout", "cloth"),
        ("upstream too big", dict(files=good, data={"cloth": f"{base}/huge.png"}), 413, "image_too_large", "cloth"),
        ("upstream not an image", dict(files=good, data={"pose": f"{base}/text.txt"}), 415, "not_an_image", "pose"),
        ("redirect loop", dict(files=good, data={"pose": f"{base}/loop"}), 502, "upstream_error", "pose"),
        # Scheduling options: each refusal names the field or header it came from.
        ("unknown priority field", dict(files=good, data={"priority": "urgent"}), 422, "invalid_option", "priority"),
        ("unknown priority header", dict(files=good, headers={"X-Priority": "urgent"}), 422, "invalid_option",
         "X-Priority"),
        ("unknown priority query", dict(files=good, params={"priority": "urgent"}), 422, "invalid_request",
         "priority"),
        ("negative timeout field", dict(files=good, data={"timeout": "-1"}), 422, "invalid_option", "timeout"),
        ("timeout header not a number", dict(files=good, headers={"X-Request-Timeout": "soon"}), 422,
         "invalid_option", "X-Request-Timeout"),
        ("null timeout in JSON", dict(json={n: base64.b64encode(d).decode() for n, d in IMAGES.items()} | {"timeout": None}),
         422, "invalid_option", "timeout"),
        ("infinite timeout in JSON", dict(content=json.dumps({n: base64.b64encode(d).decode() for n, d in IMAGES.items()})
                                          .replace("}", ', "timeout": 1e999}').encode(), headers=JSON),
         422, "invalid_option", "timeout"),
        # Hostile JSON: parsed within limits (model.safe_json), never a RecursionError's 500.
        ("100,000 nested [", dict(content=b"[" * 100_000, headers=JSON), 422, "json_too_deep", None),
        ("nested keypoints", dict(files=good, data={"keypoints": "[" * 60_000}), 422, "json_too_deep", "keypoints"),
        ("5,000-digit integer", dict(content=b'{"quality": ' + b"9" * 5000 + b"}", headers=JSON), 400,
         "invalid_json", None),
        ("NaN literal", dict(content=b'{"quality": NaN}', headers=JSON), 400, "invalid_json", None),
        ("not UTF-8", dict(content=b'{"format": "\xff"}', headers=JSON), 400, "invalid_json", None),
        ("key given twice", dict(content=b'{"cloth": "a", "cloth": "b"}', headers=JSON), 422, "duplicate_field",
         "cloth"),
        ("part given twice", dict(files=list(good.items()) + [("cloth", good["cloth"])]), 422, "duplicate_field",
         "cloth"),
        ("misspelt field", dict(files=good, data={"clothe": "x"}), 422, "unknown_field", "clothe"),
        ("lone surrogate as a key", dict(content=b'{"\\ud800": 1}', headers=JSON), 422, "unknown_field", "\\ud800"),
        ("400-digit quality query", dict(files=good, params={"quality": "9" * 400}), 422, "invalid_request",
         "quality"),
        ("multipart without a boundary", dict(content=b"x", headers={"Content-Type": "multipart/form-data"}), 400,
         "bad_multipart", None),
        ("empty JSON body", dict(content=b"", headers=JSON), 400, "invalid_json", None),
        ("quality true in JSON", dict(json={n: base64.b64encode(d).decode() for n, d in IMAGES.items()} | {"quality": True}), 422, "invalid_option", "quality"),
    ]


def test_bad_inputs_get_their_4xx_and_the_server_goes_on(client, image_server):
    for name, kwargs, status, code, field in _bad_cases(image_server.base):
        if "files" in kwargs and "data" in kwargs:  # a URL field replaces the file of the same name
            kwargs["files"] = {k: v for k, v in kwargs["files"].items() if k not in kwargs["data"]}
        answer = client.post("/v1/tryon", **kwargs)
        assert answer.status_code == status, (name, answer.text)
        assert answer.headers["content-type"] == "application/json", name
        assert answer.json() == {"error": {"code": code, "message": answer.json()["error"]["message"],
                                           "field": field}}, name
        assert answer.json()["error"]["message"], name
    assert post_files(client).status_code == 200


def test_framework_errors_have_the_same_shape(client):
    for answer, status in ((client.get("/v1/nothing"), 404), (client.get("/v1/tryon"), 405)):
        assert answer.status_code == status
        assert set(answer.json()["error"]) == {"code", "message", "field"}


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "10.0.0.1", "169.254.169.254",
                                  "[::ffff:127.0.0.1]", "0.0.0.0"])
def test_ssrf_refused_without_connecting(client, recorder, host):
    port = recorder.port if host in ("127.0.0.1", "localhost", "[::ffff:127.0.0.1]", "0.0.0.0") else 80
    started = time.monotonic()
    answer = post_files(client, images={k: v for k, v in IMAGES.items() if k != "pose"},
                        data={"pose": f"http://{host}:{port}/latest/meta-data/"})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == "url_not_allowed" and answer.json()["error"]["field"] == "pose"
    assert time.monotonic() - started < 2  # refused, not timed out connecting
    assert recorder.accepted == 0


def test_redirect_to_a_blocked_host_is_refused(client, recorder, image_server):
    image_server.routes["/to-private"] = (302, {"Location": f"http://127.0.0.1:{recorder.port}/secret"}, b"")
    image_server.routes["/to-metadata"] = (301, {"Location": "http://169.254.169.254/latest/"}, b"")
    for path in ("/to-private", "/to-metadata"):
        answer = post_files(client, images={k: v for k, v in IMAGES.items() if k != "cloth"},
                            data={"cloth": f"{image_server.base}{path}"})
        assert answer.status_code == 400 and answer.json()["error"]["code"] == "url_not_allowed", answer.text
    assert recorder.accepted == 0


def test_api_keys(server):
    url = f"{server.url}/v1/tryon"
    files = {n: (f"{n}.png", d, "image/png") for n, d in IMAGES.items()}
    missing = httpx.post(url, files=files)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "unauthorized"
    assert missing.headers["www-authenticate"] == "Bearer"
    assert httpx.post(url, files=files, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.post(url, files=files, headers={"X-API-Key": OTHER_KEY}, timeout=30).status_code == 200
    assert httpx.post(url, files=files, headers={"Authorization": f"bearer {OTHER_KEY}"}, timeout=30).status_code == 200
    for path in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(f"{server.url}{path}").status_code == 200


def test_cors_allow_list(server):
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    allowed = httpx.options(f"{server.url}/v1/tryon", headers={"Origin": ORIGIN} | preflight)
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == ORIGIN
    other = httpx.options(f"{server.url}/v1/tryon", headers={"Origin": "https://evil.example"} | preflight)
    assert "access-control-allow-origin" not in other.headers


def test_metrics_docs_and_logs(server, client):
    """A refusal and a try-on of its own (it passed only after other tests had made them): each is counted
    and logged under its request id."""
    refusals = sample_key("tryon_rejected_total", {"reason": "url_not_allowed"})
    before = server.metrics().get(refusals, 0.0)
    refused = post_files(client, images={k: v for k, v in IMAGES.items() if k != "pose"},
                         data={"pose": "http://10.0.0.1/pose.png"})
    assert refused.json()["error"]["code"] == "url_not_allowed", refused.text
    assert post_files(client, headers={"X-Request-ID": "shop-metrics"}).status_code == 200
    text = httpx.get(f"{server.url}/metrics").text
    for name in ("tryon_http_requests_total", "tryon_http_request_duration_seconds_bucket", "tryon_queue_depth",
                 "tryon_batch_size_bucket", "tryon_inference_seconds_bucket", "tryon_rejected_total"):
        assert name in text
    assert server.metrics()[refusals] == before + 1
    assert "/v1/tryon" in httpx.get(f"{server.url}/openapi.json").json()["paths"]
    assert "swagger" in httpx.get(f"{server.url}/docs").text.lower()
    end = time.monotonic() + 10  # the access line is written as the answer goes
    while '"request_id": "shop-metrics"' not in server.stderr:
        assert time.monotonic() < end, "no access log line for the request"
        time.sleep(0.05)
    assert '"timings_ms"' in server.stderr


def test_priority_and_a_deadline_no_server_could_meet(client):
    """A bulk request is served like any other when nothing waits; a deadline shorter than one
    forward with nothing queued can never be met: refused at once as the request's own fault
    (422 naming the timeout), not as the server's load (503 overloaded) nor a 504 after it."""
    bulk = post_files(client, headers={"X-Priority": "bulk"})
    assert bulk.status_code == 200, bulk.text
    started = time.monotonic()
    hopeless = post_files(client, params={"timeout": MIN_TIMEOUT_S})
    assert time.monotonic() - started < 5
    assert hopeless.status_code == 422, hopeless.text
    assert hopeless.json()["error"]["code"] == "timeout_too_short" and hopeless.json()["error"]["field"] == "timeout"
    assert "retry-after" not in hopeless.headers


def test_only_short_decoding_runs_on_the_event_loop():
    """The classic trio as sent runs on the loop (a thread hand-off costs more than it); a
    photo to detect in, keypoints to draw, or images whose headers say decoding takes more than
    INLINE_DECODE_PIXEL_BYTES go to a thread, however few bytes they are sent in."""
    from service.codec.person import decode_bytes
    from service.codec.sources import RequestParts
    from service.api.routes.tryon import INLINE_DECODE_PIXEL_BYTES, short_decode
    from service.settings import Settings

    def measured(parts: RequestParts) -> RequestParts:
        parts.decode_bytes = decode_bytes(parts, Settings(image_size="64x64"), 1 << 40)
        return parts

    small = IMAGES["cloth"]
    assert short_decode(measured(RequestParts(person={"masked_model": small, "pose": small}, cloths=[small])))
    assert not short_decode(measured(RequestParts(person={"person": small}, cloths=[small])))
    assert not short_decode(measured(RequestParts(person={"masked_model": small}, keypoints=[[0, 0, 1]],
                                                  cloths=[small])))
    buf = io.BytesIO()
    Image.new("I;16", (1200, 1000)).save(buf, "PNG")  # a few kB, 19 MB to decode
    wide = measured(RequestParts(person={"masked_model": small, "pose": small}, cloths=[buf.getvalue()]))
    assert len(buf.getvalue()) < 10_000 and wide.decode_bytes > INLINE_DECODE_PIXEL_BYTES
    assert not short_decode(wide)
