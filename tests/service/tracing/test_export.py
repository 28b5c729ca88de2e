"""The export of traces (service/tracing/export.py): its queue sends full batches; ``python -m
service`` exporting OTLP/HTTP to a collector that is not there fails no request, and the spans
dropped are counted by reason."""
from __future__ import annotations

import time

import httpx
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from service.tracing import export

from tests.fixtures.service.harness import free_port, post_files, running_server, sample_key

# What every traced server of these tests sets (test_spans.py too): OTLP, exported every 50 ms.
EXPORT = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_BSP_SCHEDULE_DELAY": "50", "OTEL_SERVICE_NAME": "tryon-test"}


def test_a_collector_that_is_not_there_fails_no_request_and_the_dropped_spans_are_counted(tmp_path,
                                                                                          standin_weights_file):
    # The export queue holds 4 spans: a request makes more, while the exporter retries a closed port.
    env = EXPORT | {"TRYON_WEIGHTS": str(standin_weights_file), "OTEL_BSP_MAX_QUEUE_SIZE": "4",
                    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "2", "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "1",
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{free_port()}/v1/traces"}
    with running_server(env, tmp_path) as proc, httpx.Client(base_url=proc.url, timeout=60) as client:
        dropped = "tryon_trace_spans_dropped_total"
        before = {reason: proc.metrics().get(sample_key(dropped, {"reason": reason}), 0.0)
                  for reason in ("queue_full", "export_failed")}
        answers = [post_files(client, params={"quality": 50 + i}) for i in range(3)]
        assert [a.status_code for a in answers] == [200] * 3
        for reason, value in before.items():
            assert proc.wait_metric(dropped, {"reason": reason}, value + 1, timeout=20) >= value + 1, reason


class Recording(SpanExporter):
    """An exporter that keeps the size of each batch it is given."""

    def __init__(self):
        self.batches: list[int] = []

    def export(self, spans) -> SpanExportResult:
        self.batches.append(len(spans))
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def test_the_queue_sends_full_batches_and_the_rest_when_it_stops(monkeypatch):
    # A schedule no test waits for: only a full batch, or stopping, sends anything.
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4")
    recording = Recording()
    queue = export.SpanQueue([export.CountingExporter(recording)])
    queue._spans.extend(range(10))  # queued without put(), which would wake the thread
    queue._export(everything=False)  # as the thread does when woken: full batches, not the 2 left
    assert recording.batches == [4, 4] and len(queue._spans) == 2
    queue.stop(timeout_s=10)
    assert recording.batches == [4, 4, 2] and not queue._spans


def test_a_full_batch_wakes_the_queue(monkeypatch):
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "3")
    recording = Recording()
    queue = export.SpanQueue([export.CountingExporter(recording)])
    try:
        for span in range(3):
            queue.put(span)
        end = time.monotonic() + 10
        while not recording.batches and time.monotonic() < end:
            time.sleep(0.01)
        assert recording.batches == [3]
    finally:
        queue.stop(timeout_s=10)


def test_bsp_variables_that_are_not_positive_integers_get_the_defaults(monkeypatch):
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "-5")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "many")
    queue = export.SpanQueue([])
    try:
        assert (queue.max_queue, queue.max_batch) == (2048, 512)
    finally:
        queue.stop(timeout_s=10)
