"""The Open Inference Protocol's paths (service/api/routes/v2.py) through a real server
process, called by Triton's own client (``tritonclient[http]`` from PyPI) as a team would:
binary tensors on (its default) and off, batch 1 and 2, bit for bit /v1/tryon's answer at
the model's size; and every bad input a 4xx with the protocol's error body, none a 500."""
from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from PIL import Image
from tritonclient.utils import InferenceServerException

from service.api.oip import HEADER_LENGTH, MODEL_NAME
from tests.fixtures.service.harness import fixture_bytes, running_server, sample_key

API_KEY = "oip-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}  # tritonclient writes its header length into the dict it is given:
                                               # each call gets its own copy, auth()
SIZE_HW = (64, 64)  # the harness's TRYON_IMAGE_SIZE
NAMES = ("masked_model", "pose", "cloth")
PNGS = {name: fixture_bytes(f"{name}_64x64.png") for name in NAMES}
INFER = f"/v2/models/{MODEL_NAME}/infer"


def auth() -> dict[str, str]:
    return dict(AUTH)


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def png(values: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, "PNG")
    return buffer.getvalue()


# Two different try-ons: the fixtures, and the same mirrored.
ITEMS = [{name: pixels(data) for name, data in PNGS.items()}]
ITEMS.append({name: np.ascontiguousarray(values[:, ::-1]) for name, values in ITEMS[0].items()})


@pytest.fixture(scope="module")
def server(tmp_path_factory, standin_weights_file):
    with running_server({"TRYON_WEIGHTS": str(standin_weights_file), "TRYON_API_KEYS": API_KEY,
                         "TRYON_MAX_BATCH_SIZE": "4", "TRYON_MAX_BATCH_WAIT_MS": "300"},
                        tmp_path_factory.mktemp("logs")) as proc:
        yield proc


@pytest.fixture(scope="module")
def client(server):
    with triton.InferenceServerClient(server.address) as client:
        yield client


def v1_tryon(server, item: dict) -> httpx.Response:
    files = {name: (f"{name}.png", png(item[name]), "image/png") for name in NAMES}
    answer = httpx.post(f"{server.url}/v1/tryon", files=files, params={"format": "png", "size": "model"},
                        headers=AUTH, timeout=60)
    assert answer.status_code == 200, answer.text
    return answer


@pytest.fixture(scope="module")
def v1_outputs(server) -> dict[int, list[np.ndarray]]:
    """/v1/tryon's answers for ITEMS as PNG at the model's size, by the engine batch they ran in:
    alone (batch 1), and sent together (batch 2). On a CPU a batch's size may move a level here
    and there (oneDNN picks its kernels by shape), so like is compared with like."""
    alone = [v1_tryon(server, item) for item in ITEMS[:1]]
    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(lambda item: v1_tryon(server, item), ITEMS))
    assert [a.headers["X-Batch-Size"] for a in alone + together] == ["1", "2", "2"]
    return {1: [pixels(a.content) for a in alone], 2: [pixels(a.content) for a in together]}


def triton_inputs(items: list[dict], binary: bool) -> list[triton.InferInput]:
    inputs = []
    for name in NAMES:
        batch = np.stack([item[name] for item in items])
        tensor = triton.InferInput(name, list(batch.shape), "UINT8")
        tensor.set_data_from_numpy(batch, binary_data=binary)
        inputs.append(tensor)
    return inputs


def test_server_live_ready_and_metadata(client, server):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL_NAME, headers=auth())
    assert client.is_model_ready(MODEL_NAME, "1", headers=auth())
    metadata = client.get_server_metadata()
    assert "binary_tensor_data" in metadata["extensions"] and metadata["version"]
    model = client.get_model_metadata(MODEL_NAME, headers=auth())
    assert model["name"] == MODEL_NAME and model["versions"] == ["1"]
    shape = [-1, *SIZE_HW, 3]
    assert model["inputs"] == [{"name": name, "datatype": "UINT8", "shape": shape} for name in NAMES]
    assert model["outputs"] == [{"name": "tryon", "datatype": "UINT8", "shape": shape}]
    assert client.get_model_metadata(MODEL_NAME, "1", headers=auth()) == model


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("batch", [1, 2])
def test_infer_equals_v1_tryon_bit_for_bit(client, v1_outputs, batch, binary):
    items = ITEMS[:batch]
    outputs = None if binary else [triton.InferRequestedOutput("tryon", binary_data=False)]  # None: the default
    result = client.infer(MODEL_NAME, triton_inputs(items, binary), outputs=outputs, headers=auth(),
                          request_id=f"r{batch}")
    got = result.as_numpy("tryon")
    assert got.dtype == np.uint8 and got.shape == (batch, *SIZE_HW, 3)
    for i in range(batch):
        np.testing.assert_array_equal(got[i], v1_outputs[batch][i])
    assert result.get_response()["id"] == f"r{batch}"


def test_binary_inputs_json_output_and_priorities(client, v1_outputs):
    """Mixed: binary in, JSON out; Triton's integer priority and timeout (microseconds)."""
    result = client.infer(MODEL_NAME, triton_inputs(ITEMS[:1], True), model_version="1", priority=2,
                          timeout=20_000_000, outputs=[triton.InferRequestedOutput("tryon", binary_data=False)],
                          headers=auth())
    np.testing.assert_array_equal(result.as_numpy("tryon")[0], v1_outputs[1][0])


def test_api_key_and_metrics(server, client):
    counted = (sample_key("tryon_request_success_total", {"route": "/v2/models/{model_name}/infer"}),
               sample_key("tryon_rejected_total", {"reason": "unauthorized"}))
    before = server.metrics()
    client.infer(MODEL_NAME, triton_inputs(ITEMS[:1], True), headers=auth())
    with pytest.raises(InferenceServerException) as refused:
        client.infer(MODEL_NAME, triton_inputs(ITEMS[:1], True))
    assert refused.value.status() == "401" and "unauthorized" in refused.value.message()
    after = server.metrics()
    assert [after[key] - before.get(key, 0.0) for key in counted] == [1, 1]  # the served one, the refused one


def json_request(batch: int = 1, **changes) -> dict:
    """A valid JSON-tensor request, then ``changes`` (input name -> its fields) applied."""
    inputs = []
    for name in NAMES:
        values = np.stack([item[name] for item in ITEMS[:batch]])
        tensor = {"name": name, "shape": list(values.shape), "datatype": "UINT8", "data": values.ravel().tolist()}
        inputs.append(tensor | changes.get(name, {}))
    return {"inputs": inputs}


def binary_body(batch: int = 1) -> tuple[dict, bytes]:
    document, tail = {"inputs": []}, b""
    for name in NAMES:
        values = np.stack([item[name] for item in ITEMS[:batch]])
        document["inputs"].append({"name": name, "shape": list(values.shape), "datatype": "UINT8",
                                   "parameters": {"binary_data_size": values.nbytes}})
        tail += values.tobytes()
    return document, tail


def send(server, body: bytes | dict, path: str = INFER, header_length: int | str | bytes | None = None):
    headers = dict(AUTH)
    if header_length is not None:
        headers[HEADER_LENGTH] = header_length if isinstance(header_length, bytes) else str(header_length)
    content = json.dumps(body).encode() if isinstance(body, dict) else body
    return httpx.post(f"{server.url}{path}", content=content, headers=headers, timeout=60)


def _bad_cases():
    document, tail = binary_body()
    header = json.dumps(document).encode()
    short = json.loads(header)
    short["inputs"][2]["parameters"]["binary_data_size"] -= 1
    short_header = json.dumps(short).encode()
    deep = b'{"inputs": ' + b"[" * 100 + b"]" * 100 + b"}"
    huge = b'{"inputs": [' + b"0," * 1_800_000 + b"0]}"
    cases = [
        ("wrong shape", json_request(masked_model={"shape": [1, 32, 128, 3]}), None, 400, "invalid_shape"),
        ("channels first", json_request(pose={"shape": [1, 3, 64, 64]}), None, 400, "invalid_shape"),
        ("batch over the limit", json_request(cloth={"shape": [5, 64, 64, 3]}), None, 400, "invalid_shape"),
        ("batch sizes differ", json_request(2, cloth={"shape": [1, 64, 64, 3],
                                                      "data": ITEMS[0]["cloth"].ravel().tolist()}), None, 400,
         "invalid_shape"),
        ("datatype", json_request(pose={"datatype": "FP32"}), None, 400, "invalid_datatype"),
        ("an input missing", {"inputs": json_request()["inputs"][:2]}, None, 400, "missing_input"),
        ("shape of three", json_request(pose={"shape": [1, 64, 192]}), None, 400, "invalid_shape"),
        ("too few values", json_request(pose={"data": [0, 1, 2]}), None, 400, "invalid_byte_size"),
        ("floats", json_request(pose={"data": [0.5] * 12288}), None, 400, "invalid_tensor"),
        ("over 255", json_request(pose={"data": [256] * 12288}), None, 400, "invalid_tensor"),
        ("ragged", json_request(pose={"data": [[1, 2], [3]]}), None, 400, "invalid_tensor"),
        ("unknown input", json_request(pose={"name": "skeleton"}), None, 400, "unknown_input"),
        ("input twice", json_request(pose={"name": "cloth"}), None, 400, "duplicate_input"),
        ("unknown output", json_request() | {"outputs": [{"name": "warped"}]}, None, 400, "unknown_output"),
        ("binary without the header", header + tail, None, 400, "invalid_json"),
        ("byte size disagrees", short_header + tail, len(short_header), 400, "invalid_byte_size"),
        ("bytes past the inputs", header + tail + b"x", len(header), 400, "invalid_byte_size"),
        ("header length past the body", header + tail, len(header + tail) + 1, 400, "invalid_header_length"),
        ("header length not a number", header + tail, "-3", 400, "invalid_header_length"),
        # Digits to str.isdigit, not to int(): a 500 before the strict pattern (the header's bytes as latin-1).
        ("header length a superscript two", header + tail, "²".encode("latin-1"), 400, "invalid_header_length"),
        ("header length with a sign", header + tail, f"+{len(header)}", 400, "invalid_header_length"),
        ("header length cuts the JSON", header + tail, len(header) - 5, 400, "invalid_json"),
        ("binary tail short", header + tail[:-10], len(header), 400, "invalid_byte_size"),
        ("deep JSON", deep, None, 422, "json_too_deep"),
        ("huge JSON", huge, None, 413, "json_too_large"),
        ("duplicate keys", b'{"inputs": [], "inputs": []}', None, 422, "duplicate_field"),
        ("not JSON", b"\xff\xfe", None, 400, "invalid_json"),
        ("unknown priority", json_request() | {"parameters": {"priority": "urgent"}}, None, 422, "invalid_option"),
        ("negative priority", json_request() | {"parameters": {"priority": -1}}, None, 422, "invalid_option"),
        ("timeout below the minimum", json_request() | {"parameters": {"timeout": 1}}, None, 422, "invalid_option"),
        ("unknown field", json_request() | {"model": "x"}, None, 400, "invalid_inference_request"),
    ]
    return [pytest.param(*case[1:], id=case[0]) for case in cases]


@pytest.mark.parametrize("body, header_length, status, code", _bad_cases())
def test_bad_input_gets_the_protocols_4xx(server, body, header_length, status, code):
    answer = send(server, body, header_length=header_length)
    assert answer.status_code == status, answer.text
    message = answer.json()["error"]
    assert isinstance(message, str) and message.startswith(f"{code}: "), message


@pytest.mark.parametrize("path, code", [("/v2/models/other/infer", "unknown_model"),
                                        (f"/v2/models/{MODEL_NAME}/versions/7/infer", "unknown_model_version"),
                                        ("/v2/models/other", "unknown_model"),
                                        (f"/v2/models/{MODEL_NAME}/versions/2/ready", "unknown_model_version"),
                                        ("/v2/nothing", "not_found")])
def test_unknown_model_version_or_path_is_a_404(server, path, code):
    answer = (send(server, json_request(), path) if path.endswith("infer")
              else httpx.get(f"{server.url}{path}", headers=AUTH))
    assert answer.status_code == 404 and answer.json()["error"].startswith(f"{code}: ")


def test_the_client_sees_the_error_and_the_server_keeps_serving(client, server, v1_outputs):
    with pytest.raises(InferenceServerException) as refused:
        client.infer("nope", triton_inputs(ITEMS[:1], True), headers=auth())
    assert refused.value.status() == "404" and "unknown_model" in refused.value.message()
    assert httpx.get(f"{server.url}/readyz").status_code == 200
    result = client.infer(MODEL_NAME, triton_inputs(ITEMS[:1], True), headers=auth())
    np.testing.assert_array_equal(result.as_numpy("tryon")[0], v1_outputs[1][0])
    assert "Traceback" not in server.stderr
