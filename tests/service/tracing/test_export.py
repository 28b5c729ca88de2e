"""The export of traces (service/tracing/export.py), ``python -m service`` exporting OTLP/HTTP: a
collector that is not there fails no request, and the spans dropped are counted by reason."""
from __future__ import annotations

import httpx

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
