"""Traces on the wire: ``python -m service`` under TRYON_WORKERS=2 exports OTLP/HTTP to a real
receiver on 127.0.0.1 (tests/utils/otlp.py). One trace per request, its spans parented across
the front end and the engine process, the batch's span linked to every request it served, the
caller's trace kept, URL fetches and webhooks sending it on, and a bad traceparent never fails a
request (service/tracing/spans.py); and in this process, what is sampled. A collector that is
not there: test_export.py; the spans as OTLP: test_otlp.py."""
from __future__ import annotations

import json
import secrets
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

import grpc
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, DEFAULT_ON
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from service.tracing import spans as recorder

from tests.fixtures.service.harness import TRYON_IMAGES, free_port, post_files, running_server
from tests.service.api.test_grpc_server import request as infer_request
from tests.service.tracing.test_export import EXPORT
from tests.utils.jobs import SECRET, WebhookReceiver, garments, submit, wait_job
from tests.utils.local_http import LocalServer
from tests.utils.otlp import OtlpReceiver

SERVER_KIND = 2  # OTLP's SPAN_KIND_SERVER


def caller() -> tuple[str, str, str]:
    """A caller's trace id, span id and the traceparent that carries them."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, f"00-{trace_id}-{span_id}-01"


def recorded(sampler) -> list:
    """The spans that end from here on, sampled by ``sampler`` (as export.install sets them up)."""
    ended: list = []
    recorder.setup(sampler, ended.append, Resource({}), InstrumentationScope("service"))
    return ended


def test_a_callers_unsampled_trace_is_carried_on_unsampled_and_nothing_is_exported():
    ended = recorded(DEFAULT_ON)  # parentbased_always_on: the caller decides
    trace_id, caller_span, _ = caller()
    with recorder.request("POST", {"traceparent": f"00-{trace_id}-{caller_span}-00"}, {}) as request:
        with recorder.span("decode", {}) as decode:
            sent = recorder.carrier()
    assert request.trace_id == decode.trace_id == int(trace_id, 16) and not decode.sampled
    assert sent == {"traceparent": f"00-{trace_id}-{decode.span_id:016x}-00"} and ended == []


def test_a_sampled_callers_trace_is_exported_with_its_tracestate_sent_on():
    ended = recorded(DEFAULT_ON)
    trace_id, caller_span, traceparent = caller()
    with recorder.request("POST", {"traceparent": traceparent, "tracestate": "shop=7"}, {}):
        with recorder.span("fetch", {}):
            sent = recorder.carrier()
    assert sent["tracestate"] == "shop=7" and sent["traceparent"].endswith("-01")
    assert [s.name for s in ended] == ["fetch", "POST"] and ended[1].parent.span_id == int(caller_span, 16)


def test_a_sampler_that_keeps_nothing_makes_no_span_to_export_and_the_context_still_flows():
    ended = recorded(ALWAYS_OFF)
    with recorder.request("POST", {}, {}) as request, recorder.span("decode", {}):
        assert recorder.log_fields() and recorder.current() is not request
    assert ended == [] and recorder.current() is None


@pytest.fixture(scope="module")
def receiver():
    otlp = OtlpReceiver()
    yield otlp
    otlp.close()


@pytest.fixture(scope="module")
def image_server():
    server = LocalServer({"/cloth.png": (200, {"Content-Type": "image/png"}, TRYON_IMAGES["cloth"])})
    yield server
    server.close()


@pytest.fixture(scope="module")
def grpc_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def server(tmp_path_factory, standin_weights_file, receiver, image_server, grpc_port):
    # Batches of two, the batcher waiting long enough for the second of two requests sent together.
    env = EXPORT | {"TRYON_GRPC_PORT": str(grpc_port), "TRYON_WORKERS": "2", "TRYON_WEIGHTS": str(standin_weights_file),
                    "TRYON_MAX_BATCH_SIZE": "2",
                    "TRYON_MAX_BATCH_WAIT_MS": "1500", "TRYON_CACHE_BYTES": "10000000",
                    "TRYON_URL_ALLOW_HOSTS": f"127.0.0.1:{image_server.port}",
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint}
    with running_server(env, tmp_path_factory.mktemp("logs")) as proc:
        yield proc


def access_line(server, request_id: str, timeout: float = 10) -> dict:
    """The access log line of a request, once a front end has written it (polled)."""
    end = time.monotonic() + timeout
    while True:
        lines = [json.loads(line) for line in server.stderr.splitlines() if line.startswith("{")]
        found = [line for line in lines if line.get("request_id") == request_id and line["message"] == "request"]
        if found or time.monotonic() > end:
            assert len(found) == 1, [line for line in lines if line.get("request_id") == request_id]
            return found[0]
        time.sleep(0.05)


def in_trace(spans, trace_id: str) -> dict[str, list]:
    found: dict[str, list] = {}
    for span in spans:
        if span.trace_id == trace_id:
            found.setdefault(span.name, []).append(span)
    return found


def test_one_trace_per_request_across_the_two_processes_and_the_batch_linked_to_both(server, receiver):
    callers = [caller(), caller()]

    def send(i: int) -> httpx.Response:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            # A quality each that no other test asks for: two cache keys of their own, so both reach
            # the engine whichever tests ran before on this server.
            return post_files(client, params={"quality": 81 + i},
                              headers={"traceparent": callers[i][2], "X-Request-ID": f"traced-{i}"})

    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(send, range(2)))
    assert [a.status_code for a in answers] == [200, 200]
    assert [a.headers["X-Batch-Size"] for a in answers] == ["2", "2"]

    names = {"POST /v1/tryon", "decode", "person", "cache", "queue", "encode"}
    traced = {trace_id for trace_id, _, _ in callers}

    def batch_exported(got) -> bool:
        """This batch's span (linked to both requests) and its inference span are in: the server is
        shared, so an inference span of another test's batch says nothing of this one."""
        batches = {s.trace_id for s in got if s.name == "batch" and traced <= {t for t, _ in s.links}}
        return any(s.name == "inference" and s.trace_id in batches for s in got)

    spans = receiver.wait_for(lambda got: all(names <= set(in_trace(got, t)) for t in traced) and batch_exported(got))
    requests = []
    for i, (trace_id, caller_span, _) in enumerate(callers):
        trace = in_trace(spans, trace_id)
        assert all(len(trace[name]) == 1 for name in names), {k: len(v) for k, v in trace.items()}
        request = trace["POST /v1/tryon"][0]
        requests.append(request)
        assert request.parent_span_id == caller_span and request.kind == SERVER_KIND
        assert request.attributes["tryon.request_id"] == f"traced-{i}"
        assert request.attributes["http.response.status_code"] == 200
        assert request.resource["service.name"] == "tryon-test"
        for child in ("decode", "cache", "queue", "encode"):
            assert trace[child][0].parent_span_id == request.span_id, child
        assert trace["person"][0].parent_span_id == trace["decode"][0].span_id
        # The wait is measured where the queue is: in the engine process, under the front end's span.
        engine = trace["queue"][0].resource["service.instance.id"]
        assert engine != request.resource["service.instance.id"]

    batch, = [s for s in spans if s.name == "batch" and (callers[0][0], requests[0].span_id) in s.links]
    assert set(batch.links) == {(r.trace_id, r.span_id) for r in requests}
    assert batch.parent_span_id == "" and batch.trace_id not in (callers[0][0], callers[1][0])
    assert batch.attributes["tryon.batch_size"] == 2 and batch.resource["service.instance.id"] == engine
    inference, = [s for s in spans if s.name == "inference" and s.trace_id == batch.trace_id]
    assert inference.parent_span_id == batch.span_id

    access = access_line(server, "traced-0")
    assert access["trace_id"] == callers[0][0] and access["span_id"] == requests[0].span_id


def test_a_grpc_call_keeps_the_callers_trace_from_its_metadata(server, receiver, grpc_port):
    trace_id, caller_span, traceparent = caller()
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(infer_request(), metadata=(("traceparent", traceparent),),
                                                            timeout=60)
    names = {"grpc ModelInfer", "decode", "queue", "encode"}
    spans = receiver.wait_for(lambda got: names <= set(in_trace(got, trace_id)))
    trace = in_trace(spans, trace_id)
    call, = trace["grpc ModelInfer"]
    assert call.parent_span_id == caller_span and call.kind == SERVER_KIND
    assert call.attributes["http.response.status_code"] == 200
    assert trace["decode"][0].parent_span_id == trace["encode"][0].parent_span_id == call.span_id


def test_a_malformed_traceparent_is_ignored_and_the_request_starts_a_trace_of_its_own(server, receiver):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        answer = post_files(client, headers={"traceparent": "00-not-a-trace-zz", "tracestate": "=,=",
                                             "X-Request-ID": "bad-tp"})
    assert answer.status_code == 200
    spans = receiver.wait_for(lambda got: any(s.attributes.get("tryon.request_id") == "bad-tp" for s in got))
    request, = [s for s in spans if s.attributes.get("tryon.request_id") == "bad-tp"]
    assert request.parent_span_id == "" and len(request.trace_id) == 32 and int(request.trace_id, 16) != 0


def test_a_url_fetch_carries_the_trace_on(server, receiver, image_server):
    trace_id, _, traceparent = caller()
    files = {name: (f"{name}.png", TRYON_IMAGES[name], "image/png") for name in ("masked_model", "pose")}
    answer = httpx.post(f"{server.url}/v1/tryon", files=files, data={"cloth": f"{image_server.base}/cloth.png"},
                        headers={"traceparent": traceparent}, timeout=60)
    assert answer.status_code == 200, answer.text
    spans = receiver.wait_for(lambda got: "fetch" in in_trace(got, trace_id))
    fetch, = in_trace(spans, trace_id)["fetch"]
    sent = [headers["traceparent"] for path, headers in image_server.headers
            if path == "/cloth.png" and trace_id in headers.get("traceparent", "")]
    assert sent == [f"00-{trace_id}-{fetch.span_id}-01"]


def test_a_jobs_task_is_one_trace_and_its_webhook_carries_its_span_on(tmp_path, standin_weights_file, receiver):
    env = EXPORT | {"TRYON_WEIGHTS": str(standin_weights_file), "TRYON_URL_ALLOW_HOSTS": "127.0.0.1",
                    "TRYON_WEBHOOK_SECRET": SECRET, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint}
    hook = WebhookReceiver()
    try:
        with running_server(env, tmp_path) as proc:
            doc = submit(proc.url, garments(2), {"webhook_url": hook.url}).json()
            assert wait_job(proc.url, doc["id"])["status"] == "succeeded"
            (headers, _, _), = hook.wait(1)
    finally:
        hook.close()
    _, trace_id, span_id, _ = headers["traceparent"].split("-")
    spans = receiver.wait_for(lambda got: "webhook" in in_trace(got, trace_id))
    webhook, = in_trace(spans, trace_id)["webhook"]
    assert webhook.span_id == span_id
    stages = {"job.task", "person", "decode", "queue", "encode"}
    here = webhook.resource["service.instance.id"]
    # The server has stopped: every span of its job's task is in.
    task, = [s for s in spans if s.name == "job.task" and s.resource["service.instance.id"] == here]
    assert stages <= set(in_trace(spans, task.trace_id))
