"""service/tracing/__init__.py: which OTEL_* settings turn tracing on, and that off it imports
nothing of OpenTelemetry's SDK (the GPU check's environment has none) and makes no span."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from service import tracing
from tests.utils import REPO, REPO_PYTHONPATH


@pytest.mark.parametrize("environ, names", [
    ({}, []),
    ({"OTEL_TRACES_EXPORTER": "none"}, []),
    ({"OTEL_TRACES_EXPORTER": "otlp"}, ["otlp"]),
    ({"OTEL_TRACES_EXPORTER": " OTLP , console"}, ["otlp", "console"]),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, []),
])
def test_only_otel_traces_exporter_turns_tracing_on(environ, names):
    assert tracing.wanted(environ) == names


def _served_app(env: dict[str, str]) -> dict:
    """What an app built in a fresh process with ``env`` reports of tracing."""
    script = ("import sys, json; from service.api.app import create_app; from service import tracing\n"
              "from service.settings import Settings\n"
              "create_app(Settings(image_size='64x64'))\n"
              "with tracing.span('decode') as span: pass\n"
              "print(json.dumps({'enabled': tracing.ENABLED, 'span': span is not None,\n"
              "  'sdk': sorted(m for m in sys.modules if m.startswith(('opentelemetry.sdk.trace', 'service.tracing.')))}))")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TRYON_"))}
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env=clean | {"PYTHONPATH": REPO_PYTHONPATH} | env, check=True).stdout
    return json.loads(next(line for line in out.splitlines() if line.startswith('{"enabled"')))


def test_off_imports_no_sdk_and_makes_no_span():
    assert _served_app({}) == {"enabled": False, "span": False, "sdk": []}


def test_an_unknown_exporter_leaves_tracing_off_and_the_service_starting():
    assert _served_app({"OTEL_TRACES_EXPORTER": "zipkin"})["enabled"] is False


def test_on_the_sdk_is_imported_and_spans_are_made():
    seen = _served_app({"OTEL_TRACES_EXPORTER": "console"})
    assert seen["enabled"] and seen["span"] and "service.tracing.export" in seen["sdk"]
