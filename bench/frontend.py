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

    python -m bench.frontend --baseline ef5db43 --baseline dfa3cbe --requests 300 --repeats 3 --wrk-seconds 3 \
        --wrk-bodies 3200 --out bench/results/frontend-cpu.json

``--baseline REF`` (repeatable) measures that commit too, alternating with the work tree in
the same run, served by this tree's stand-in (bench/frontend_server.py, copied into it).
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from importlib import metadata
from pathlib import Path

import httpx
from PIL import Image

from bench.common import ROOT, finish_report
from tests.utils.processes import process_tree
from bench.cpu_model import cpu_model_name
from bench.load import batch_histogram, batches_formed, wait_ready

EXAMPLES = ROOT / "service" / "examples"
PACKAGES = ("fastapi", "starlette", "uvicorn", "httptools", "uvloop", "python-multipart", "torch", "pillow",
            "simplejpeg", "blake3")
SIZES = {"192x256": (192, 256), "768x1024": (768, 1024)}  # W x H of the inputs sent
JPEG_QUALITY = 90


def jpeg_inputs(size_wh: tuple[int, int], garments: int) -> list[dict[str, bytes]]:
    """The examples as JPEGs of ``size_wh`` (scaled with bicubic when not at their own size),
    ``garments`` times with a cloth of its own (a corner block of pixels numbers it): every
    request is a miss of the response cache, which stays on as served."""
    pictures = {}
    for name in ("masked_model", "pose", "cloth"):
        img = Image.open(EXAMPLES / f"{name}.png").convert("RGB")
        pictures[name] = img if img.size == size_wh else img.resize(size_wh, Image.BICUBIC)
    person = {name: _jpeg(pictures[name]) for name in ("masked_model", "pose")}
    requests = []
    for i in range(garments):
        cloth = pictures["cloth"].copy()
        cloth.paste((i % 256, i // 256 % 256, 77), (0, 0, 16, 16))
        requests.append(person | {"cloth": _jpeg(cloth)})
    return requests


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def _ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of ``pids`` (the server's processes stay the same during a measurement)."""
    return sum(_ticks(p) for p in pids) / os.sysconf("SC_CLK_TCK")


def multipart_files(request: dict[str, bytes]) -> dict:
    return {name: (f"{name}.jpg", data, "image/jpeg") for name, data in request.items()}


async def drive(url: str, inputs: list[dict[str, bytes]], clients: int) -> dict:
    """POSTs each of ``inputs`` once, ``clients`` at a time."""
    statuses: Counter = Counter()
    stages: dict[str, list[float]] = defaultdict(list)
    remaining = iter(inputs)

    async def client_loop(client: httpx.AsyncClient):
        for request in remaining:
            answer = await client.post("/v1/tryon", files=multipart_files(request))
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


WRK_SCRIPT = ROOT / "bench" / "frontend_wrk.lua"
BOUNDARY = "tryon-bench-frontend"


def drive_wrk(url: str, inputs: list[dict[str, bytes]], clients: int, seconds: int, folder: Path) -> dict:
    """As ``drive``, by wrk (C, one thread) for ``seconds``: the load generator shares this
    machine's cores with the server, and httpx spends more CPU per request than the server
    does. Each of ``inputs`` is sent once; ``reused`` counts requests past them (cache hits)."""
    folder.mkdir(exist_ok=True)
    for i, request in enumerate(inputs, 1):
        built = httpx.Request("POST", url, headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
                              files=multipart_files(request))
        (folder / f"{i}.body").write_bytes(built.read())
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    run = subprocess.run(["wrk", "-t1", f"-c{clients}", f"-d{seconds}s", "--timeout", "60s", "-s", str(WRK_SCRIPT),
                          url, "--", str(folder), str(len(inputs)), BOUNDARY],
                         capture_output=True, text=True, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    shutil.rmtree(folder)
    report = json.loads(run.stdout.strip().splitlines()[-1])
    elapsed, ok = report["duration_us"] / 1e6, report["requests"] - report["non_2xx"]
    return {"elapsed_s": round(elapsed, 3), "requests": report["requests"], "non_2xx": report["non_2xx"],
            "socket_errors": report["socket_errors"], "reused": max(0, report["requests"] - len(inputs)),
            "requests_per_s": round(ok / elapsed, 1),
            "client_cpu_ms_per_request": round((after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
                                               * 1000 / max(report["requests"], 1), 3)}


def start_server(code: Path, port: int, workers: int, tmp: Path, extra_env: dict[str, str] | None = None
                 ) -> subprocess.Popen:
    """``extra_env``: variables on top (bench/tracing.py's OTEL_*)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRYON_", "OTEL_"))}
    # One torch thread: the stand-in needs none, and idle OpenMP workers spinning on a busy
    # machine would be charged to the request path.
    hidden = code / "_hidden"  # (a baseline's) modules made unimportable
    env |= {"PYTHONPATH": os.pathsep.join(map(str, [hidden, code] if hidden.exists() else [code])),
            "OMP_NUM_THREADS": "1", "TRYON_DEVICE": "cpu", "TRYON_WORKERS": str(workers),
            "TRYON_LOG_LEVEL": "info", "TRYON_QUEUE_LIMIT": "256"} | (extra_env or {})
    log = open(tmp / f"server-{port}.log", "wb")
    return subprocess.Popen([sys.executable, "-m", "bench.frontend_server", "--host", "127.0.0.1",
                             "--port", str(port)], cwd=code, env=env, stdout=log, stderr=subprocess.STDOUT)


def checkout(ref: str, folder: Path) -> Path:
    """The files of commit ``ref`` (for a baseline measured in the same run), with this tree's
    stand-in engine, so both are measured with the same one."""
    folder.mkdir()
    archive = subprocess.run(["git", "archive", ref], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    for stand_in in ("bench/frontend_server.py", "tests/fixtures/standin_engine.py"):
        shutil.copy(ROOT / stand_in, folder / stand_in)
    # As it was served: a commit that did not depend on httptools and uvloop ran on h11 and asyncio.
    if "httptools" in (folder / "pyproject.toml").read_text():
        return folder
    for module in ("httptools", "uvloop"):
        package = folder / "_hidden" / module
        package.mkdir(parents=True)
        (package / "__init__.py").write_text(f"raise ImportError('{module}: not in the baseline')\n")
    return folder


def _serves_workers(code: Path) -> bool:
    """Whether the tree at ``code`` has TRYON_WORKERS (service/workers.py then, its supervisor since)."""
    return any((code / "service" / path).exists() for path in ("workers.py", "processes/supervisor.py"))


def measure(code: str, workers: int, size: str, args, tmp: Path) -> dict:
    port = 19000 + os.getpid() % 1000
    process = start_server(args.code[code], port, workers, tmp)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process)
        inputs = jpeg_inputs(SIZES[size], args.clients * 4 + args.requests + (args.wrk_bodies if args.wrk else 0))
        asyncio.run(drive(url, inputs[:args.clients * 4], args.clients))  # warm: imports, first allocations
        pids = process_tree(process.pid)
        before, histogram = cpu_seconds(pids), batch_histogram(httpx.get(f"{url}/metrics").text)
        load = os.getloadavg()[0]
        result = asyncio.run(drive(url, inputs[args.clients * 4:args.clients * 4 + args.requests], args.clients))
        cpu = cpu_seconds(pids) - before
        formed = batches_formed(histogram, batch_histogram(httpx.get(f"{url}/metrics").text))
        if args.wrk:  # other garments (each a cache miss) for --wrk-seconds, by a cheaper client
            before = cpu_seconds(pids)
            by_wrk = drive_wrk(url, inputs[args.clients * 4 + args.requests:], args.clients, args.wrk_seconds,
                               tmp / "bodies")
            by_wrk["server_cpu_ms_per_request"] = round((cpu_seconds(pids) - before) * 1000 /
                                                        max(by_wrk["requests"] - by_wrk["non_2xx"], 1), 3)
            # Server and client together: how many of the machine's cores the run kept busy.
            by_wrk["cores_busy"] = round((by_wrk["server_cpu_ms_per_request"] + by_wrk["client_cpu_ms_per_request"])
                                         * by_wrk["requests_per_s"] / 1000, 2)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
    ok = result["statuses"].get("200", 0)
    return {"code": code, "workers": workers, "inputs": size, "input_bytes": sum(map(len, inputs[0].values())),
            "requests": args.requests, "clients": args.clients, "server_processes": len(pids),
            "server_cpu_ms_per_request": round(cpu * 1000 / max(ok, 1), 3), **result,
            "batches_formed": formed, **({"wrk": by_wrk} if args.wrk else {}),
            "loadavg_1min_before": round(load, 2),
            "loadavg_1min_after": round(os.getloadavg()[0], 2)}


def median(values):
    """The middle value (of an even count, the upper one: a value that was measured)."""
    values = sorted(values)
    return values[len(values) // 2]


def machine(packages: tuple[str, ...]) -> dict:
    """What a report says of where it ran."""
    return {"cpus": os.cpu_count(), "cpu_model": cpu_model_name(), "platform": platform.platform(),
            "python": platform.python_version(), "packages": {name: metadata.version(name) for name in packages},
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}


def finish(report: dict, summary: dict, out: Path | None) -> None:
    """Adds the summary and the end time, writes the raw JSON to ``out`` and prints the summary."""
    report["summary"] = summary
    finish_report(report, out, summary)


def summary(results: list[dict]) -> dict:
    """Per (inputs, workers): the median CPU per request and req/s over the repeats; the
    ratio of req/s of 2 front-end processes to 1."""
    by = defaultdict(list)
    for r in results:
        by[(r["code"], r["inputs"], r["workers"])].append(r)
    table = {}
    for (code, size, w), rs in sorted(by.items()):
        row = {"cpu_ms_per_request": median([r["server_cpu_ms_per_request"] for r in rs]),
               "requests_per_s": median([r["requests_per_s"] for r in rs])}
        if all("wrk" in r for r in rs):
            row |= {"wrk_cpu_ms_per_request": median([r["wrk"]["server_cpu_ms_per_request"] for r in rs]),
                    "wrk_requests_per_s": median([r["wrk"]["requests_per_s"] for r in rs])}
            if all("client_cpu_ms_per_request" in r["wrk"] for r in rs):
                row["wrk_client_cpu_ms_per_request"] = median([r["wrk"]["client_cpu_ms_per_request"] for r in rs])
                row["wrk_cores_busy"] = median([r["wrk"]["cores_busy"] for r in rs])
        table[f"{code} {size} workers={w}"] = row
    for code, size in {(code, size) for code, size, _ in by}:
        one, two = table.get(f"{code} {size} workers=1"), table.get(f"{code} {size} workers=2")
        for client in ("", "wrk_"):
            if one and two and f"{client}requests_per_s" in one:
                table[f"{code} {size} {client}speed-up 2 vs 1"] = round(
                    two[f"{client}requests_per_s"] / one[f"{client}requests_per_s"], 3)
    return table


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300, help="measured requests per configuration")
    parser.add_argument("--clients", type=int, default=16, help="requests in flight at once")
    parser.add_argument("--workers", default="1,2", help="front-end process counts to measure (1,2)")
    parser.add_argument("--sizes", default=",".join(SIZES), help="input sizes, WxH (192x256,768x1024)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds over all configurations, alternating")
    parser.add_argument("--label", default="", help="what code was measured (e.g. baseline)")
    parser.add_argument("--baseline", action="append", default=[],
                        help="also measure this commit (git archive), alternating with the work tree; repeatable")
    parser.add_argument("--no-wrk", dest="wrk", action="store_false",
                        help="httpx only (by default wrk, where installed, also sends for --wrk-seconds)")
    parser.add_argument("--wrk-seconds", type=int, default=4)
    parser.add_argument("--wrk-bodies", type=int, default=1500, help="distinct requests prepared for wrk")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    args.wrk = args.wrk and shutil.which("wrk") is not None

    report = {"label": args.label, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": machine(PACKAGES) | {"pillow": Image.__version__}, "results": []}
    with tempfile.TemporaryDirectory() as tmp:
        args.code = {"ours": ROOT}
        report["baselines"] = {}
        for ref in args.baseline:
            args.code[f"baseline {ref}"] = checkout(ref, Path(tmp) / f"baseline-{ref}")
            report["baselines"][ref] = subprocess.run(["git", "rev-parse", ref], cwd=ROOT, text=True,
                                                      capture_output=True).stdout.strip()
        for _ in range(args.repeats):
            for size in args.sizes.split(","):
                for code in args.code:
                    for workers in map(int, args.workers.split(",")):
                        if workers > 1 and not _serves_workers(args.code[code]):
                            continue  # one process is all that commit has
                        report["results"].append(measure(code, workers, size, args, Path(tmp)))
                        print(json.dumps(report["results"][-1]), file=sys.stderr, flush=True)
    finish(report, summary(report["results"]), args.out)


if __name__ == "__main__":
    main()
