"""Benchmark: the server CPU that tracing costs per request (not a timed test).

Serves with bench.frontend_server (the stand-in engine: the front end's CPU is what is
measured) in one process, tracing off (no OTEL_* variable) and on (OTEL_TRACES_EXPORTER=otlp,
every request sampled, exported over OTLP/HTTP to a real receiver on 127.0.0.1,
tests/utils/otlp.py), alternating, repeated, in one run. For each protocol in PROTOCOLS (the v2
infer with binary tensors, /v1/tryon multipart; a gRPC column is one more entry there), the
server's CPU milliseconds per request (user + system of its processes, from /proc, over the
measured requests; the exporter's thread included), and the spans received per request.

    python -m bench.tracing --requests 400 --repeats 3 --out bench/results/tracing-cpu.json
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Awaitable, Callable

import httpx
import numpy as np
from PIL import Image

from bench.common import ROOT
from bench.frontend import (PACKAGES, cpu_seconds, finish, jpeg_inputs, machine, median, multipart_files,
                            start_server)
from bench.load import wait_ready
from tests.utils.otlp import OtlpReceiver
from tests.utils.processes import process_tree

SIZE_WH = (192, 256)  # the inputs sent: the model's size, so the front end does no resizing
MODEL = "daflow"
HEADER_LENGTH = "Inference-Header-Content-Length"
TRACING = {"off": {}, "on": {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_TRACES_SAMPLER": "always_on",
                             "OTEL_SERVICE_NAME": "tryon-bench"}}


def v2_body(item: dict[str, bytes]) -> tuple[bytes, int]:
    """A v2 infer request of one item as binary tensors (the three inputs, [1, H, W, 3] uint8), its
    output asked for as binary data."""
    document, tail = {"inputs": [], "outputs": [{"name": "tryon", "parameters": {"binary_data": True}}]}, b""
    for name in ("masked_model", "pose", "cloth"):
        values = np.asarray(Image.open(io.BytesIO(item[name])).convert("RGB"))[None]
        document["inputs"].append({"name": name, "shape": list(values.shape), "datatype": "UINT8",
                                   "parameters": {"binary_data_size": values.nbytes}})
        tail += values.tobytes()
    header = json.dumps(document).encode()
    return header + tail, len(header)


async def _send_v2(client: httpx.AsyncClient, item) -> httpx.Response:
    body, header_length = item
    return await client.post(f"/v2/models/{MODEL}/infer", content=body,
                             headers={HEADER_LENGTH: str(header_length), "Content-Type": "application/octet-stream"})


async def _send_multipart(client: httpx.AsyncClient, item) -> httpx.Response:
    return await client.post("/v1/tryon", files=multipart_files(item))


# Protocol -> (how one request is built from the JPEG inputs, how it is sent). A gRPC column
# adds an entry whose sender calls ModelInfer.
PROTOCOLS: dict[str, tuple[Callable, Callable[..., Awaitable[httpx.Response]]]] = {
    "http_binary_v2": (v2_body, _send_v2),
    "multipart_v1": (lambda item: item, _send_multipart),
}


async def drive(url: str, send, items: list, clients: int) -> Counter:
    statuses: Counter = Counter()
    remaining = iter(items)

    async def loop(client: httpx.AsyncClient):
        for item in remaining:
            statuses[str((await send(client, item)).status_code)] += 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        await asyncio.gather(*(loop(client) for _ in range(clients)))
    return statuses


def measure(tracing: str, args, receiver: OtlpReceiver, inputs: dict[str, list], tmp: Path) -> list[dict]:
    port = 19000 + os.getpid() % 1000
    env = TRACING[tracing] | ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint} if tracing == "on" else {})
    process = start_server(ROOT, port, 1, tmp, env)
    url = f"http://127.0.0.1:{port}"
    results = []
    try:
        wait_ready(url, process)
        pids = process_tree(process.pid)
        for protocol, (_, send) in PROTOCOLS.items():
            items = inputs[protocol]
            asyncio.run(drive(url, send, items[:args.clients * 4], args.clients))  # warm
            spans_before, before = len(receiver.spans), cpu_seconds(pids)
            statuses = asyncio.run(drive(url, send, items[args.clients * 4:], args.clients))
            cpu = cpu_seconds(pids) - before
            ok = statuses.get("200", 0)
            spans = len(receiver.spans) - spans_before  # (those still queued arrive later: a lower bound)
            results.append({"tracing": tracing, "protocol": protocol, "requests": args.requests,
                            "clients": args.clients, "statuses": dict(statuses),
                            "server_cpu_ms_per_request": round(cpu * 1000 / max(ok, 1), 4),
                            "spans_received_per_request": round(spans / max(ok, 1), 2),
                            "loadavg_1min": round(os.getloadavg()[0], 2)})
            print(json.dumps(results[-1]), flush=True)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
    return results


def summary(results: list[dict]) -> dict:
    """Per protocol: the median CPU per request off and on over the repeats, and on minus off."""
    table = {}
    for protocol in PROTOCOLS:
        off, on = (median([r["server_cpu_ms_per_request"] for r in results
                           if r["protocol"] == protocol and r["tracing"] == mode]) for mode in ("off", "on"))
        table[protocol] = {"cpu_ms_per_request_off": off, "cpu_ms_per_request_on": on,
                           "tracing_adds_ms_per_request": round(on - off, 4)}
    return table


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=400, help="measured requests per protocol and setting")
    parser.add_argument("--clients", type=int, default=8, help="requests in flight at once")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of off then on")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    jpegs = jpeg_inputs(SIZE_WH, args.clients * 4 + args.requests)  # each garment its own: no cache hit
    inputs = {protocol: [build(item) for item in jpegs] for protocol, (build, _) in PROTOCOLS.items()}
    report = {"label": "tracing off vs on (100% sampled, OTLP/HTTP to a local receiver), stand-in engine, "
                       "one process", "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "device": "cpu", "inputs_wh": SIZE_WH,
              "machine": machine(PACKAGES + ("opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-http")),
              "results": []}
    receiver = OtlpReceiver()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(args.repeats):
                for tracing in TRACING:
                    report["results"] += measure(tracing, args, receiver, inputs, Path(tmp))
    finally:
        receiver.close()
    report["spans_received"] = len(receiver.spans)
    finish(report, summary(report["results"]), args.out)


if __name__ == "__main__":
    main()
