"""Response cache benchmark (not a timed test): how fast a hit is answered.

Starts a throw-away redis-server and two servers at once, one with the
in-process LRU and one with Redis, and sends the same /v1/tryon request
(service/examples, multipart, JPEG answer) to each in turn, one request at
a time over a kept-alive connection: client-side latency of the hits (p50,
p95, p99, max), the server's own ``cache`` stage, and for a baseline in the
same run a miss now and then (a new ``quality`` each time: another key, so
the engine runs). The server's ``decode`` and ``cache`` stages show where a
hit's time goes. Raw JSON with CPU model, versions, load and date.

    python -m bench.cache --hits 400 --misses 8 --out bench/results/cache-cpu-256x192.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.common import ROOT, finish_report, standin_weights_file
from bench.cpu_model import cpu_model_name
from bench.load import percentile, start_server, wait_ready
from tests.fixtures.service.harness import RedisServer, free_port, redis_server_binary

EXAMPLES = ROOT / "service" / "examples"
TARGET_P99_MS = 20.0


def files() -> dict:
    return {name: (f"{name}.png", (EXAMPLES / f"{name}.png").read_bytes(), "image/png")
            for name in ("masked_model", "pose", "cloth")}


def stage_ms(answer: httpx.Response, stage: str) -> float | None:
    found = re.search(rf"\b{stage};dur=([\d.]+)", answer.headers.get("server-timing", ""))
    return float(found.group(1)) if found else None


def post(client: httpx.Client, body: dict, quality: int) -> tuple[float, httpx.Response]:
    started = time.perf_counter()
    answer = client.post("/v1/tryon", files=body, params={"quality": quality})
    elapsed = (time.perf_counter() - started) * 1000
    if answer.status_code != 200:
        raise SystemExit(f"{answer.status_code}: {answer.text}")
    return elapsed, answer


def summary_ms(values: list[float]) -> dict:
    values = sorted(values)
    return {"n": len(values), **{f"p{q}": percentile(values, q) for q in (50, 95, 99)},
            "max": round(values[-1], 3) if values else None, "mean": round(sum(values) / len(values), 3)}


def scraped(url: str, name: str) -> dict:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {json.dumps(s.labels, sort_keys=True) if s.labels else "": s.value
            for family in text_string_to_metric_families(text) for s in family.samples if s.name == name}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hits", type=int, default=400, help="hit requests per store")
    parser.add_argument("--misses", type=int, default=8, help="miss requests per store (the baseline)")
    parser.add_argument("--image-size", default="256x192")
    parser.add_argument("--sampler", default="auto")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the servers")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    binary = redis_server_binary()
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")

    report = {"benchmark": "bench.cache", "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "environment": {"cpu": cpu_model_name(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
                              "python": platform.python_version(), "torch": version("torch"),
                              "redis_py": version("redis"), "fastapi": version("fastapi"),
                              "redis_server": subprocess.run([binary, "--version"], capture_output=True,
                                                             text=True).stdout.strip(),
                              "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]},
              "request": {"endpoint": "/v1/tryon", "inputs": "service/examples (multipart PNG)", "format": "jpeg",
                          "image_size": args.image_size, "clients": 1, "connection": "kept alive"},
              "target_hit_p99_ms": TARGET_P99_MS}
    body = files()
    with tempfile.TemporaryDirectory() as tmp:
        redis = RedisServer(binary, Path(tmp))
        base = {"TRYON_WEIGHTS": str(standin_weights_file(Path(tmp))), "TRYON_IMAGE_SIZE": args.image_size,
                "TRYON_SAMPLER": args.sampler, "TRYON_MAX_BATCH_SIZE": "1", "TRYON_LOG_LEVEL": "warning",
                "OMP_NUM_THREADS": str(args.threads)}
        stores = {"lru": {"TRYON_CACHE_BYTES": str(64 << 20)}, "redis": {"TRYON_CACHE_URL": redis.url}}
        servers = {}
        try:
            for name, env in stores.items():
                port = free_port()
                servers[name] = (f"http://127.0.0.1:{port}",
                                 start_server(port, base | env, Path(tmp) / f"{name}.log"))
            for url, process in servers.values():
                wait_ready(url, process)
            report["results"] = run(servers, body, args)
        finally:
            for _, process in servers.values():
                process.send_signal(signal.SIGTERM)
                process.wait(120)
            redis.kill()
    report["environment"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    finish_report(report, args.out)


def run(servers: dict, body: dict, args) -> dict:
    clients = {name: httpx.Client(base_url=url, timeout=120) for name, (url, _) in servers.items()}
    hits = {name: [] for name in servers}
    hit_cache_stage = {name: [] for name in servers}
    hit_decode_stage = {name: [] for name in servers}
    misses = {name: [] for name in servers}
    try:
        for name, client in clients.items():  # the entry to hit, and a warm connection
            _, first = post(client, body, 90)
            assert first.headers["x-cache"] == "miss"
            if name == "redis":
                time.sleep(0.2)  # the store happens after the answer
        miss_every = max(1, args.hits // max(1, args.misses))
        qualities = iter(q for q in range(89, 0, -1))
        for i in range(args.hits):
            for name, client in clients.items():  # alternating: both see the same machine load
                elapsed, answer = post(client, body, 90)
                assert answer.headers["x-cache"] == "hit", answer.headers
                hits[name].append(elapsed)
                hit_cache_stage[name].append(stage_ms(answer, "cache"))
                hit_decode_stage[name].append(stage_ms(answer, "decode"))
            if i % miss_every == miss_every - 1 and len(misses["lru"]) < args.misses:
                quality = next(qualities)
                for name, client in clients.items():
                    elapsed, answer = post(client, body, quality)
                    assert answer.headers["x-cache"] == "miss"
                    misses[name].append(elapsed)
        results = {}
        for name, (url, _) in servers.items():
            hit_summary = summary_ms(hits[name])
            results[name] = {"hit_ms": hit_summary, "hit_server_decode_stage_ms": summary_ms(hit_decode_stage[name]),
                             "hit_server_cache_stage_ms": summary_ms(hit_cache_stage[name]),
                             "miss_ms": summary_ms(misses[name]),
                             "miss_over_hit_p50": round(summary_ms(misses[name])["p50"] / hit_summary["p50"], 1),
                             "hit_p99_under_target": hit_summary["p99"] < TARGET_P99_MS,
                             "metrics": {"tryon_cache_hit_ratio": scraped(url, "tryon_cache_hit_ratio")[""],
                                         "tryon_cache_hits_total": scraped(url, "tryon_cache_hits_total"),
                                         "tryon_cache_misses_total": scraped(url, "tryon_cache_misses_total"),
                                         "tryon_cache_store_errors_total": scraped(
                                             url, "tryon_cache_store_errors_total")}}
        return results
    finally:
        for client in clients.values():
            client.close()


if __name__ == "__main__":
    main()
