"""Benchmark: the server CPU that tracing costs per request (not a timed test).

Serves with bench.frontend_server (the stand-in engine: the front end's CPU is what is
measured), one process each, two servers at once: tracing off (no OTEL_* variable) and on
(OTEL_TRACES_EXPORTER=otlp, every request sampled, exported over OTLP/HTTP to a real receiver
on 127.0.0.1, tests/utils/otlp.py), the same requests sent to each in turn, repeated. For each
protocol in PROTOCOLS (the v2 infer with binary tensors, /v1/tryon multipart, gRPC ModelInfer
with raw_input_contents by tritonclient.grpc.aio on TRYON_GRPC_PORT), the server's CPU
milliseconds per request (user + system of its processes, from /proc, over the measured
requests; the exporter's thread included); and the spans received per traced request (about:
the readiness probes' spans are counted too). So one run gives both comparisons: the protocols
(each with tracing off, against gRPC's) and tracing on against off.

    python -m bench.tracing --requests 500 --repeats 6 --out bench/results/tracing-cpu.json
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
from typing import Any, Awaitable, Callable

import httpx
import numpy as np
import tritonclient.grpc.aio as triton_aio
from PIL import Image
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.utils import InferenceServerException

from bench.common import ROOT
from bench.frontend import (PACKAGES, cpu_seconds, finish, jpeg_inputs, machine, median, multipart_files,
                            start_server)
from bench.load import wait_ready
from tests.fixtures.service.harness import free_port
from tests.utils.otlp import OtlpReceiver
from tests.utils.processes import process_tree

SIZE_WH = (192, 256)  # the inputs sent: the model's size, so the front end does no resizing
MODEL, OUTPUT, INPUT_NAMES = "daflow", "tryon", ("masked_model", "pose", "cloth")
HEADER_LENGTH = "Inference-Header-Content-Length"
TRACING = {"off": {}, "on": {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_TRACES_SAMPLER": "always_on",
                             "OTEL_SERVICE_NAME": "tryon-bench"}}


def tensors(item: dict[str, bytes]) -> dict[str, np.ndarray]:
    """One item's three inputs as the tensors both v2 protocols send: [1, H, W, 3] uint8."""
    return {name: np.asarray(Image.open(io.BytesIO(item[name])).convert("RGB"))[None] for name in INPUT_NAMES}


def v2_body(item: dict[str, bytes]) -> tuple[bytes, int]:
    """A v2 infer request of one item as binary tensors, its output asked for as binary data."""
    document, tail = {"inputs": [], "outputs": [{"name": OUTPUT, "parameters": {"binary_data": True}}]}, b""
    for name, values in tensors(item).items():
        document["inputs"].append({"name": name, "shape": list(values.shape), "datatype": "UINT8",
                                   "parameters": {"binary_data_size": values.nbytes}})
        tail += values.tobytes()
    header = json.dumps(document).encode()
    return header + tail, len(header)


def grpc_inputs(item: dict[str, bytes]) -> list[InferInput]:
    """A ModelInfer request of one item, as tritonclient sends it: raw_input_contents."""
    inputs = []
    for name, values in tensors(item).items():
        inputs.append(InferInput(name, list(values.shape), "UINT8"))
        inputs[-1].set_data_from_numpy(values)
    return inputs


def _http_client(server: dict[str, str], clients: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    return httpx.AsyncClient(base_url=server["http"], timeout=60, limits=limits)


def _grpc_client(server: dict[str, str], clients: int) -> triton_aio.InferenceServerClient:
    return triton_aio.InferenceServerClient(server["grpc"])  # one channel: the calls share its HTTP/2 connection


async def _send_v2(client: httpx.AsyncClient, item) -> str:
    body, header_length = item
    response = await client.post(f"/v2/models/{MODEL}/infer", content=body, headers={
        HEADER_LENGTH: str(header_length), "Content-Type": "application/octet-stream"})
    return str(response.status_code)


async def _send_multipart(client: httpx.AsyncClient, item) -> str:
    return str((await client.post("/v1/tryon", files=multipart_files(item))).status_code)


async def _send_grpc(client: triton_aio.InferenceServerClient, item) -> str:
    try:
        await client.infer(MODEL, item, outputs=[InferRequestedOutput(OUTPUT)], client_timeout=60)
    except InferenceServerException as exc:
        return exc.status() or "error"
    return "200"  # counted with HTTP's successes


# Protocol -> (how one request is built from the JPEG inputs, the client to a server, how one
# request is sent with it: its status, "200" when served).
PROTOCOLS: dict[str, tuple[Callable, Callable[[dict[str, str], int], Any], Callable[..., Awaitable[str]]]] = {
    "http_binary_v2": (v2_body, _http_client, _send_v2),
    "multipart_v1": (lambda item: item, _http_client, _send_multipart),
    "grpc": (grpc_inputs, _grpc_client, _send_grpc),
}


async def drive(server: dict[str, str], protocol: str, items: list, clients: int) -> Counter:
    """``items`` sent to ``server`` in ``protocol``, ``clients`` at a time; their statuses counted."""
    _, connect, send = PROTOCOLS[protocol]
    statuses: Counter = Counter()
    remaining = iter(items)

    async def loop(client):
        for item in remaining:
            statuses[await send(client, item)] += 1

    async with connect(server, clients) as client:
        await asyncio.gather(*(loop(client) for _ in range(clients)))
    return statuses


def measure(args, receiver: OtlpReceiver, inputs: dict[str, list], tmp: Path) -> list[dict]:
    """Both servers run at once (the machine's other load falls on both alike); per protocol, each
    round sends ``--requests`` to one then the other (the order alternating), each charged its
    processes' CPU over its own requests."""
    servers = {}
    try:
        for tracing, env in TRACING.items():
            port, grpc_port = free_port(), free_port()
            env = env | {"TRYON_GRPC_PORT": str(grpc_port)}
            if tracing == "on":
                env = env | {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint}
            servers[tracing] = ({"http": f"http://127.0.0.1:{port}", "grpc": f"127.0.0.1:{grpc_port}"},
                                start_server(ROOT, port, 1, tmp, env))
        for server, process in servers.values():
            wait_ready(server["http"], process)
        pids = {tracing: process_tree(process.pid) for tracing, (_, process) in servers.items()}
        results = []
        for protocol in PROTOCOLS:
            items, warm = inputs[protocol], args.clients * 4
            for server, _ in servers.values():
                asyncio.run(drive(server, protocol, items[:warm], args.clients))  # imports, first allocations
            for round_ in range(args.repeats):
                order = list(servers) if round_ % 2 == 0 else list(servers)[::-1]
                chunk = items[warm + round_ * args.requests:warm + (round_ + 1) * args.requests]
                for tracing in order:
                    before = cpu_seconds(pids[tracing])
                    statuses = asyncio.run(drive(servers[tracing][0], protocol, chunk, args.clients))
                    cpu = cpu_seconds(pids[tracing]) - before
                    ok = statuses.get("200", 0)
                    results.append({"tracing": tracing, "protocol": protocol, "round": round_,
                                    "requests": len(chunk), "clients": args.clients, "statuses": dict(statuses),
                                    "server_cpu_ms_per_request": round(cpu * 1000 / max(ok, 1), 4),
                                    "loadavg_1min": round(os.getloadavg()[0], 2)})
                    print(json.dumps(results[-1]), flush=True)
        return results
    finally:
        for _, process in servers.values():
            process.send_signal(signal.SIGTERM)
        for _, process in servers.values():
            process.wait(60)


def summary(results: list[dict]) -> dict:
    """Per protocol: the median over the rounds of the CPU per request off and on, and of each
    round's difference (on minus off, the two measured back to back under the same load); and
    each HTTP protocol's CPU per request (off) beyond gRPC's."""
    table = {}
    for protocol in PROTOCOLS:
        rows = {(r["round"], r["tracing"]): r["server_cpu_ms_per_request"] for r in results
                if r["protocol"] == protocol}
        rounds = sorted({round_ for round_, _ in rows})
        table[protocol] = {"cpu_ms_per_request_off": median([rows[r, "off"] for r in rounds]),
                           "cpu_ms_per_request_on": median([rows[r, "on"] for r in rounds]),
                           "tracing_adds_ms_per_request": round(median([rows[r, "on"] - rows[r, "off"]
                                                                        for r in rounds]), 4),
                           "added_by_round": [round(rows[r, "on"] - rows[r, "off"], 4) for r in rounds]}
    # The protocols compared (tracing off): what each costs per request beyond gRPC.
    table["beyond_grpc_ms_per_request_off"] = {
        protocol: round(row["cpu_ms_per_request_off"] - table["grpc"]["cpu_ms_per_request_off"], 4)
        for protocol, row in table.items() if protocol != "grpc"}
    return table


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=400, help="measured requests per round, protocol and setting")
    parser.add_argument("--clients", type=int, default=8, help="requests in flight at once")
    parser.add_argument("--repeats", type=int, default=4, help="rounds (off then on, then on then off, ...)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    # Each garment its own (no cache hit); each server gets the same requests.
    jpegs = jpeg_inputs(SIZE_WH, args.clients * 4 + args.requests * args.repeats)
    inputs = {protocol: [build(item) for item in jpegs] for protocol, (build, _, _) in PROTOCOLS.items()}
    report = {"label": "tracing off vs on (100% sampled, OTLP/HTTP to a local receiver), stand-in engine, "
                       "one process", "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "device": "cpu", "inputs_wh": SIZE_WH,
              "machine": machine(PACKAGES + ("grpcio", "tritonclient", "opentelemetry-sdk",
                                             "opentelemetry-exporter-otlp-proto-http")),
              "results": []}
    receiver = OtlpReceiver()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            report["results"] = measure(args, receiver, inputs, Path(tmp))
    finally:
        receiver.close()
    # Every span is in once the servers have stopped (each exports what it holds as it stops).
    traced = sum(r["statuses"].get("200", 0) for r in report["results"] if r["tracing"] == "on")
    traced += args.clients * 4 * len(PROTOCOLS)  # the warm-up's
    table = summary(report["results"]) | {"spans_per_traced_request": round(len(receiver.spans) / traced, 2)}
    finish(report, table, args.out)


if __name__ == "__main__":
    main()
