"""service/tracing/otlp.py writes the message OpenTelemetry's own encoder writes for the same
spans: both decoded with the generated classes and compared, for spans of every shape the
service makes (a root, a child, a caller's child with its tracestate, a batch with links, an
error with its exception event, attributes of every type)."""
from __future__ import annotations

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from service.tracing import otlp, spans

RESOURCE = Resource({"service.name": "tryon-test", "service.instance.id": "abc", "pid": 7, "ratio": 0.5})


@pytest.fixture
def ended():
    """The spans that end, with this test's resource (spans.setup as export.install would)."""
    out: list = []
    spans.setup(ALWAYS_ON, out.append, RESOURCE, InstrumentationScope("service"))
    return out


class Job:
    def __init__(self, trace, enqueued_at: float):
        self.trace, self.enqueued_at = trace, enqueued_at


def make_spans() -> None:
    caller = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "tracestate": "vendor=x,b=2"}
    with spans.request("POST", caller, {}) as request:
        with spans.span("decode", {"bool": True, "int": -3, "float": 1.5, "str": "é", "bytes": b"\x00",
                                   "list": ["a", "b"]}):
            pass
        with pytest.raises(ValueError), spans.span("encode", {}):
            raise ValueError("bad pixels")
        jobs = [Job(spans.current(), 0.0)]
        spans.finish_request(request, "POST /v1/tryon", 503, {"tryon.request_id": "r-1"})
    with spans.request("GET", {}, {}):
        jobs.append(Job(spans.current(), 0.0))
    with spans.attached({"traceparent": "00-1af7651916cd43dd8448eb211c80319c-c7ad6b7169203331-01"}):
        jobs.append(Job(spans.current(), 0.0))
    with spans.batch(jobs, queued=True), spans.span("inference", {}):
        pass


def decoded(message: bytes) -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest.FromString(message)


def test_the_request_is_the_message_opentelemetrys_encoder_writes(ended):
    make_spans()
    assert {s.name for s in ended} == {"POST /v1/tryon", "decode", "encode", "GET", "queue", "batch", "inference"}
    ours = decoded(otlp.Encoder(RESOURCE, "service").request(ended))
    theirs = encode_spans(ended)
    assert ours == theirs
    written = {s.name: s for s in ours.resource_spans[0].scope_spans[0].spans}
    assert written["encode"].events[0].name == "exception" and written["encode"].status.code == 2  # ERROR
    assert written["POST /v1/tryon"].trace_state == "vendor=x,b=2" and written["POST /v1/tryon"].flags == 0x300
    assert {link.span_id for link in written["batch"].links} == {
        written["POST /v1/tryon"].span_id, written["GET"].span_id, bytes.fromhex("c7ad6b7169203331")}


def test_an_attribute_of_no_otlp_type_is_left_out_and_the_rest_written(ended):
    with spans.span("decode", {"kept": 1, "object": object()}):
        pass
    span, = decoded(otlp.Encoder(RESOURCE, "service").request(ended)).resource_spans[0].scope_spans[0].spans
    assert [a.key for a in span.attributes] == ["kept"]
