"""Benchmark of the request path alone (not a timed test).

Serves with bench.frontend_server (the model replaced by a stand-in that costs
nothing; everything else as served: multipart parsing, decoding, letterboxing,
tensors, the queue, encoding, logging, metrics) and POSTs three JPEG inputs
(the service's example masked model, pose map and cloth) at 192x256 (the
model's size) and at 768x1024 (a shop's photo, the examples scaled up), with 1
and with 2 front-end processes (TRYON_WORKERS), alternating, repeated. For each:
server CPU milliseconds per request (user + system time of the server's
processes, from /proc, over the measured requests), the mean time per stage
(the Server-Timing header), requests per second, and the batch sizes formed.

    python -m bench.frontend --baseline 61db89b --requests 300 --repeats 3 --out bench/results/frontend-cpu.json

``--baseline REF`` measures that commit too, alternating with the work tree in the same
run (it must hold bench/frontend_server.py: this file's first commit has it).
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx
from PIL import Image

from bench.common import ROOT, write_report
from bench.cpu_model import cpu_model_name
from bench.load import batch_histogram, batches_formed, wait_ready

EXAMPLES = ROOT / "service" / "examples"
SIZES = {"192x256": (192, 256), "768x1024": (768, 1024)}  # W x H of the inputs sent
JPEG_QUALITY = 90


def jpeg_inputs(size_wh: tuple[int, int]) -> dict[str, bytes]:
    """The examples as JPEGs of ``size_wh`` (scaled with bicubic when not at their own size)."""
    inputs = {}
    for name in ("masked_model", "pose", "cloth"):
        img = Image.open(EXAMPLES / f"{name}.png").convert("RGB")
        if img.size != size_wh:
            img = img.resize(size_wh, Image.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=JPEG_QUALITY)
        inputs[name] = buf.getvalue()
    return inputs


def _ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def process_tree(pid: int) -> list[int]:
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += _children(p)
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of ``pids`` (the server's processes stay the same during a measurement)."""
    return sum(_ticks(p) for p in pids) / os.sysconf("SC_CLK_TCK")


async def drive(url: str, inputs: dict[str, bytes], requests: int, clients: int) -> dict:
    files = {name: (f"{name}.jpg", data, "image/jpeg") for name, data in inputs.items()}
    statuses: Counter = Counter()
    stages: dict[str, list[float]] = defaultdict(list)
    remaining = iter(range(requests))

    async def client_loop(client: httpx.AsyncClient):
        for _ in remaining:
            answer = await client.post("/v1/tryon", files=files)
            statuses[str(answer.status_code)] += 1
            for item in answer.headers.get("server-timing", "").split(","):
                name, _, duration = item.strip().partition(";dur=")
                if duration:
                    stages[name].append(float(duration))

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        began = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
        elapsed = time.perf_counter() - began
    return {"elapsed_s": round(elapsed, 3), "statuses": dict(statuses),
            "requests_per_s": round(statuses.get("200", 0) / elapsed, 1),
            "stage_ms": {name: round(sum(v) / len(v), 3) for name, v in stages.items()}}


def start_server(code: Path, port: int, workers: int, tmp: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRYON_")}
    # One torch thread: the stand-in needs none, and idle OpenMP workers spinning on a busy
    # machine would be charged to the request path.
    env |= {"PYTHONPATH": str(code), "OMP_NUM_THREADS": "1", "TRYON_DEVICE": "cpu", "TRYON_WORKERS": str(workers),
            "TRYON_LOG_LEVEL": "info", "TRYON_QUEUE_LIMIT": "256"}
    log = open(tmp / f"server-{port}.log", "wb")
    return subprocess.Popen([sys.executable, "-m", "bench.frontend_server", "--host", "127.0.0.1",
                             "--port", str(port)], cwd=code, env=env, stdout=log, stderr=subprocess.STDOUT)


def checkout(ref: str, folder: Path) -> Path:
    """The files of commit ``ref`` (for a baseline measured in the same run)."""
    folder.mkdir()
    archive = subprocess.run(["git", "archive", ref], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def measure(code: str, workers: int, size: str, args, tmp: Path) -> dict:
    port = 19000 + os.getpid() % 1000
    process = start_server(args.code[code], port, workers, tmp)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process)
        inputs = jpeg_inputs(SIZES[size])
        asyncio.run(drive(url, inputs, args.clients * 4, args.clients))  # warm: imports, first allocations
        pids = process_tree(process.pid)
        before, histogram = cpu_seconds(pids), batch_histogram(httpx.get(f"{url}/metrics").text)
        load = os.getloadavg()[0]
        result = asyncio.run(drive(url, inputs, args.requests, args.clients))
        cpu = cpu_seconds(pids) - before
        formed = batches_formed(histogram, batch_histogram(httpx.get(f"{url}/metrics").text))
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
    ok = result["statuses"].get("200", 0)
    return {"code": code, "workers": workers, "inputs": size, "input_bytes": sum(map(len, inputs.values())),
            "requests": args.requests, "clients": args.clients, "server_processes": len(pids),
            "server_cpu_ms_per_request": round(cpu * 1000 / max(ok, 1), 3), **result,
            "batches_formed": formed, "loadavg_1min_before": round(load, 2),
            "loadavg_1min_after": round(os.getloadavg()[0], 2)}


def summary(results: list[dict]) -> dict:
    """Per (inputs, workers): the median CPU per request and req/s over the repeats; the
    ratio of req/s of 2 front-end processes to 1."""
    by = defaultdict(list)
    for r in results:
        by[(r["code"], r["inputs"], r["workers"])].append(r)

    def median(values):
        values = sorted(values)
        return values[len(values) // 2]
    table = {f"{code} {size} workers={w}": {
        "cpu_ms_per_request": median([r["server_cpu_ms_per_request"] for r in rs]),
        "requests_per_s": median([r["requests_per_s"] for r in rs])} for (code, size, w), rs in sorted(by.items())}
    for code, size in {(code, size) for code, size, _ in by}:
        one, two = table.get(f"{code} {size} workers=1"), table.get(f"{code} {size} workers=2")
        if one and two:
            table[f"{code} {size} speed-up 2 vs 1"] = round(two["requests_per_s"] / one["requests_per_s"], 3)
    return table


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300, help="measured requests per configuration")
    parser.add_argument("--clients", type=int, default=16, help="requests in flight at once")
    parser.add_argument("--workers", default="1,2", help="front-end process counts to measure (1,2)")
    parser.add_argument("--sizes", default=",".join(SIZES), help="input sizes, WxH (192x256,768x1024)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds over all configurations, alternating")
    parser.add_argument("--label", default="", help="what code was measured (e.g. baseline)")
    parser.add_argument("--baseline", help="also measure this commit (git archive), alternating with the work tree")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    report = {"label": args.label, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": {"cpus": os.cpu_count(), "cpu_model": cpu_model_name(), "platform": platform.platform(),
                          "python": platform.python_version(), "pillow": Image.__version__,
                          "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]},
              "results": []}
    with tempfile.TemporaryDirectory() as tmp:
        args.code = {"ours": ROOT}
        if args.baseline:
            args.code["baseline"] = checkout(args.baseline, Path(tmp) / "baseline")
            report["baseline"] = subprocess.run(["git", "rev-parse", args.baseline], cwd=ROOT, text=True,
                                                capture_output=True).stdout.strip()
        for _ in range(args.repeats):
            for size in args.sizes.split(","):
                for code in args.code:
                    for workers in map(int, args.workers.split(",")):
                        if code == "baseline" and workers > 1:
                            continue  # one process is all the baseline has
                        report["results"].append(measure(code, workers, size, args, Path(tmp)))
                        print(json.dumps(report["results"][-1]), file=sys.stderr, flush=True)
    report["summary"] = summary(report["results"])
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if args.out:
        write_report(report, args.out)
    print(json.dumps(report["summary"], indent=2))


if __name__ == "__main__":
    main()
