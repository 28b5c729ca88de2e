"""The Open Inference Protocol over gRPC (service/api/grpc_server.py) through a real server process,
called by Triton's own clients (``tritonclient.grpc``, sync and aio) as a team would: every RPC, infer
at batch 1 and 2 bit for bit /v1/tryon's answer, typed contents as raw, each bad input its status code
(the server serving on), the API key, a full queue's retry-after, and SIGTERM letting held calls finish."""
from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import threading

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc import service_pb2 as pb, service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException

from service.api.errors import GRPC_STATUS, grpc_status
from service.api.oip import MODEL_NAME
from service.codec.errors import ApiError
from service.settings import Settings
from tests.fixtures.service.harness import ServerProcess, free_port, running_server, sample_key
from tests.service.api.routes.test_v2 import API_KEY, ITEMS, NAMES, SIZE_HW, pixels, v1_tryon
from tests.utils import REPO

AUTH = {"authorization": f"Bearer {API_KEY}"}  # the key test_v2.v1_tryon sends too
MAX_UPLOAD_BYTES = 65_536  # the body limit, and with it gRPC's receive limit, a few hundred kB
QUEUE_LIMIT = 4


def server_env(weights, grpc_port: int, **more: str) -> dict[str, str]:
    return {"TRYON_WEIGHTS": str(weights), "TRYON_API_KEYS": API_KEY, "TRYON_GRPC_PORT": str(grpc_port),
            "TRYON_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES), "TRYON_MAX_BATCH_SIZE": "4",
            "TRYON_MAX_BATCH_WAIT_MS": "300", "TRYON_QUEUE_LIMIT": str(QUEUE_LIMIT)} | more


@pytest.fixture(scope="module")
def grpc_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def server(tmp_path_factory, standin_weights_file, grpc_port):
    with running_server(server_env(standin_weights_file, grpc_port), tmp_path_factory.mktemp("logs")) as proc:
        yield proc


@pytest.fixture(scope="module")
def client(server, grpc_port):
    with triton.InferenceServerClient(f"127.0.0.1:{grpc_port}") as client:
        yield client


@pytest.fixture
def stub(server, grpc_port):
    """The protocol's own stub, for what tritonclient does not send (typed contents, bad requests)."""
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def v1_outputs(server) -> dict[int, list[np.ndarray]]:
    """/v1/tryon's answers for ITEMS at the model's size, alone (batch 1) and sent together (batch 2):
    oneDNN picks its kernels by the batch's shape, so like is compared with like (test_v2.py)."""
    alone = [v1_tryon(server, ITEMS[0])]
    answers = [None, None]
    threads = [threading.Thread(target=lambda i=i: answers.__setitem__(i, v1_tryon(server, ITEMS[i])))
               for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [a.headers["X-Batch-Size"] for a in alone + answers] == ["1", "2", "2"]
    return {1: [pixels(a.content) for a in alone], 2: [pixels(a.content) for a in answers]}


def batch_of(items: list[dict], name: str) -> np.ndarray:
    return np.stack([item[name] for item in items])


def triton_inputs(module, items: list[dict]) -> list:
    inputs = []
    for name in NAMES:
        values = batch_of(items, name)
        tensor = module.InferInput(name, list(values.shape), "UINT8")
        tensor.set_data_from_numpy(values)
        inputs.append(tensor)
    return inputs


def request(batch: int = 1, model: str = MODEL_NAME, **changes) -> pb.ModelInferRequest:
    """A valid raw request; ``changes``: an input's name -> its fields to change (name, datatype, shape, raw)."""
    message = pb.ModelInferRequest(model_name=model)
    for name in NAMES:
        values = batch_of(ITEMS[:batch], name)
        fields = {"name": name, "datatype": "UINT8", "shape": list(values.shape), "raw": values.tobytes()}
        fields |= changes.get(name, {})
        message.inputs.add(name=fields["name"], datatype=fields["datatype"], shape=fields["shape"])
        message.raw_input_contents.append(fields["raw"])
    return message


def typed(kind: str) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name=MODEL_NAME)
    for name in NAMES:
        values = batch_of(ITEMS[:1], name)
        tensor = message.inputs.add(name=name, datatype="UINT8", shape=list(values.shape))
        if kind == "uint_contents":
            tensor.contents.uint_contents.extend(values.ravel().tolist())
        else:
            tensor.contents.bytes_contents.append(values.tobytes())
    return message


def test_every_rpc_with_the_sync_client(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL_NAME, headers=AUTH) and client.is_model_ready(MODEL_NAME, "1", headers=AUTH)
    metadata = client.get_server_metadata()
    assert metadata.name == "daflow-tryon" and metadata.version
    model = client.get_model_metadata(MODEL_NAME, headers=AUTH, as_json=True)
    shape = [str(n) for n in (-1, *SIZE_HW, 3)]  # int64 in JSON: strings
    assert model["name"] == MODEL_NAME and model["versions"] == ["1"]
    assert model["inputs"] == [{"name": name, "datatype": "UINT8", "shape": shape} for name in NAMES]
    assert model["outputs"] == [{"name": "tryon", "datatype": "UINT8", "shape": shape}]


def test_the_rpcs_not_served_are_unimplemented(stub):
    with pytest.raises(grpc.RpcError) as refused:
        stub.RepositoryIndex(pb.RepositoryIndexRequest(), metadata=tuple(AUTH.items()), timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.parametrize("batch", [1, 2])
def test_infer_with_the_sync_client_equals_v1_tryon(client, v1_outputs, batch):
    result = client.infer(MODEL_NAME, triton_inputs(triton, ITEMS[:batch]), headers=AUTH, request_id=f"s{batch}",
                          priority=1, timeout=20_000_000)
    got = result.as_numpy("tryon")
    assert got.dtype == np.uint8 and got.shape == (batch, *SIZE_HW, 3)
    for i in range(batch):
        np.testing.assert_array_equal(got[i], v1_outputs[batch][i])
    assert result.get_response().id == f"s{batch}"


def test_every_rpc_and_infer_with_the_aio_client(server, grpc_port, v1_outputs):
    async def calls():
        async with triton_aio.InferenceServerClient(f"127.0.0.1:{grpc_port}") as client:
            assert await client.is_server_live() and await client.is_server_ready()
            assert await client.is_model_ready(MODEL_NAME, headers=AUTH)
            assert (await client.get_server_metadata()).name == "daflow-tryon"
            assert (await client.get_model_metadata(MODEL_NAME, "1", headers=AUTH)).inputs[0].name == NAMES[0]
            results = {}
            for batch in (1, 2):
                results[batch] = await client.infer(MODEL_NAME, triton_inputs(triton_aio, ITEMS[:batch]),
                                                    headers=AUTH, model_version="1")
            return results
    results = asyncio.run(calls())
    for batch, result in results.items():
        for i in range(batch):
            np.testing.assert_array_equal(result.as_numpy("tryon")[i], v1_outputs[batch][i])


@pytest.mark.parametrize("kind", ["uint_contents", "bytes_contents"])
def test_typed_contents_answer_as_raw_does(stub, v1_outputs, kind):
    answer = stub.ModelInfer(typed(kind), metadata=tuple(AUTH.items()), timeout=60)
    (raw,) = answer.raw_output_contents
    assert list(answer.outputs[0].shape) == [1, *SIZE_HW, 3]
    np.testing.assert_array_equal(np.frombuffer(raw, np.uint8).reshape(SIZE_HW + (3,)), v1_outputs[1][0])


def _bad_cases():
    oversized = request()
    oversized.raw_input_contents[0] += b"\0" * Settings(max_upload_bytes=MAX_UPLOAD_BYTES).request_body_limit
    typed_and_raw = request()
    typed_and_raw.inputs[1].contents.uint_contents.extend([1, 2, 3])
    fp32 = request()
    fp32.inputs[0].contents.fp32_contents.extend([0.5])
    del fp32.raw_input_contents[:]
    short_timeout = request()
    short_timeout.parameters["timeout"].int64_param = 1  # microseconds, under TRYON's 10 ms minimum
    unknown_priority = request()
    unknown_priority.parameters["priority"].string_param = "urgent"
    cases = [
        ("timeout below the minimum", short_timeout, "INVALID_ARGUMENT", "invalid_option"),
        ("unknown priority", unknown_priority, "INVALID_ARGUMENT", "invalid_option"),
        ("wrong shape", request(pose={"shape": [1, 32, 128, 3]}), "INVALID_ARGUMENT", "invalid_shape"),
        ("batch over the limit", request(cloth={"shape": [5, 64, 64, 3]}), "INVALID_ARGUMENT", "invalid_shape"),
        ("datatype", request(pose={"datatype": "FP32"}), "INVALID_ARGUMENT", "invalid_datatype"),
        ("byte size", request(cloth={"raw": b"\0" * 100}), "INVALID_ARGUMENT", "invalid_byte_size"),
        ("unknown model", request(model="other"), "NOT_FOUND", "unknown_model"),
        ("unknown input", request(pose={"name": "skeleton"}), "INVALID_ARGUMENT", "unknown_input"),
        ("input twice", request(pose={"name": "cloth"}), "INVALID_ARGUMENT", "duplicate_input"),
        ("typed and raw", typed_and_raw, "INVALID_ARGUMENT", "invalid_tensor"),
        ("floats for UINT8", fp32, "INVALID_ARGUMENT", "invalid_tensor"),
        ("oversized message", oversized, "RESOURCE_EXHAUSTED", None),  # grpc's own refusal
    ]
    return [pytest.param(*case[1:], id=case[0]) for case in cases]


@pytest.mark.parametrize("message, status, code", _bad_cases())
def test_bad_input_gets_its_status_code_and_the_server_serves_on(stub, server, v1_outputs, message, status, code):
    before = server.metrics().get(sample_key("tryon_rejected_total", {"reason": code}), 0.0)
    with pytest.raises(grpc.RpcError) as refused:
        stub.ModelInfer(message, metadata=tuple(AUTH.items()), timeout=60)
    assert refused.value.code() == grpc.StatusCode[status], refused.value.details()
    if code is not None:
        assert refused.value.details().startswith(f"{code}: ")
        assert server.metrics()[sample_key("tryon_rejected_total", {"reason": code})] == before + 1
    answer = stub.ModelInfer(request(), metadata=tuple(AUTH.items()), timeout=60)
    np.testing.assert_array_equal(np.frombuffer(answer.raw_output_contents[0], np.uint8).reshape(SIZE_HW + (3,)),
                                  v1_outputs[1][0])
    assert "Traceback" not in server.stderr


@pytest.mark.parametrize("headers", [None, {"authorization": "Bearer nope"}, {"x-api-key": "nope"}],
                         ids=["missing", "wrong bearer", "wrong x-api-key"])
def test_a_missing_or_wrong_key_is_unauthenticated(client, headers):
    for call in (lambda: client.infer(MODEL_NAME, triton_inputs(triton, ITEMS[:1]), headers=headers),
                 lambda: client.get_model_metadata(MODEL_NAME, headers=headers),
                 lambda: client.is_model_ready(MODEL_NAME, headers=headers)):
        with pytest.raises(InferenceServerException) as refused:
            call()
        assert refused.value.status() == "StatusCode.UNAUTHENTICATED"
        assert refused.value.message().startswith("unauthorized: ")
    assert client.is_server_live(headers=headers)  # health is open, as over HTTP
    assert client.is_model_ready(MODEL_NAME, headers={"x-api-key": API_KEY})


def test_a_full_queue_is_resource_exhausted_with_retry_after(server, grpc_port):
    """More calls at once than TRYON_QUEUE_LIMIT holds: the rest are refused at once, with the delay."""
    async def burst():
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            calls = [stub.ModelInfer(request(), metadata=tuple(AUTH.items()), timeout=60)
                     for _ in range(4 * QUEUE_LIMIT)]
            await asyncio.gather(*calls, return_exceptions=True)
            return [(await call.code(), await call.trailing_metadata()) for call in calls]
    outcomes = asyncio.run(burst())
    refused = [(code, dict(trailers)) for code, trailers in outcomes if code != grpc.StatusCode.OK]
    assert refused, "the burst did not fill the queue: nothing was tested"
    assert {code for code, _ in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert all(int(trailers["retry-after"]) >= 1 for _, trailers in refused)


def test_the_status_table_covers_every_outcome():
    assert grpc_status(ApiError(400, "invalid_shape", "")) == "INVALID_ARGUMENT"
    assert grpc_status(ApiError(503, "queue_full", "")) == "RESOURCE_EXHAUSTED"
    assert grpc_status(ApiError(503, "shutting_down", "")) == "UNAVAILABLE"
    assert grpc_status(ApiError(504, "deadline_exceeded", "")) == "DEADLINE_EXCEEDED"
    assert grpc_status(ApiError(422, "timeout_too_short", "")) == "INVALID_ARGUMENT"
    assert all(name in grpc.StatusCode.__members__ for name in GRPC_STATUS.values())


@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "two-front-ends"])
def test_sigterm_lets_held_calls_finish(tmp_path, standin_weights_file, v1_outputs, workers):
    """A call held in the queue (a batch waits TRYON_MAX_BATCH_WAIT_MS to fill) when SIGTERM comes is
    answered; the process then exits 0. With two front ends both bind the port (SO_REUSEPORT)."""
    port = free_port()
    env = server_env(standin_weights_file, port, TRYON_MAX_BATCH_WAIT_MS="3000", TRYON_WORKERS=str(workers))
    proc = ServerProcess(env, tmp_path)
    try:
        proc.wait_ready()
        with triton.InferenceServerClient(f"127.0.0.1:{port}") as client:
            answer = {}
            thread = threading.Thread(target=lambda: answer.setdefault("result", client.infer(
                MODEL_NAME, triton_inputs(triton, ITEMS[:1]), headers=AUTH, client_timeout=60)))
            thread.start()
            assert proc.wait_metric("tryon_queue_depth", {}, 1) >= 1, "the call never reached the queue"
            proc.process.send_signal(signal.SIGTERM)
            thread.join(60)
            np.testing.assert_array_equal(answer["result"].as_numpy("tryon")[0], v1_outputs[1][0])
        assert proc.process.wait(30) == 0, proc.stderr[-3000:]
    finally:
        proc.stop(signal.SIGKILL)


def test_grpc_is_imported_only_when_its_port_is_set():
    """The service's own start path (tryon-serve, the app) needs neither grpcio nor tritonclient."""
    code = ("import sys, service.__main__; from service.api.app import create_app; from service.settings import "
            "Settings; create_app(Settings()); print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('grpc', 'tritonclient')))")
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "[]"


def test_a_client_that_cancels_abandons_its_call_and_the_server_serves_on(server, grpc_port, v1_outputs):
    """A call cancelled while it waits for its batch: counted as gone, the next call answered."""
    before = server.metrics().get(sample_key("tryon_request_failure_total", {
        "route": "/inference.GRPCInferenceService/ModelInfer", "reason": "client_gone"}), 0.0)

    async def cancel_then_call():
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            call = stub.ModelInfer(request(), metadata=tuple(AUTH.items()), timeout=60)
            # queued: inside the batch's 300 ms wait (TRYON_MAX_BATCH_WAIT_MS)
            assert await asyncio.to_thread(server.wait_metric, "tryon_queue_depth", {}, 1) >= 1
            call.cancel()
            return await stub.ModelInfer(request(), metadata=tuple(AUTH.items()), timeout=60)
    answer = asyncio.run(cancel_then_call())
    np.testing.assert_array_equal(np.frombuffer(answer.raw_output_contents[0], np.uint8).reshape(SIZE_HW + (3,)),
                                  v1_outputs[1][0])
    assert server.wait_metric("tryon_request_failure_total", {"route": "/inference.GRPCInferenceService/ModelInfer",
                                                              "reason": "client_gone"}, before + 1) == before + 1


def test_one_process_does_not_share_a_grpc_port_another_server_holds(tmp_path, standin_weights_file):
    """grpc turns SO_REUSEPORT on by default: a second server on the port would take half its calls.
    One process binds without it (only the front ends of TRYON_WORKERS > 1 share the port), so a
    port held by another server, SO_REUSEPORT or not, fails the start, naming the setting."""
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        proc = ServerProcess(server_env(standin_weights_file, holder.getsockname()[1]), tmp_path)
        try:
            assert proc.process.wait(120) != 0
        finally:
            proc.stop(signal.SIGKILL)
    assert "TRYON_GRPC_PORT" in proc.stderr
