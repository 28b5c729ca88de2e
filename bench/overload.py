"""Overload benchmark (not a timed test): a burst far beyond what the server can serve in time.

Starts ``python -m service`` with its default settings (stand-in weights, 256x192,
TRYON_REQUEST_TIMEOUT_S 30), waits until ready, then sends ``--burst`` try-ons at
once and records, per request, its status, error code, Retry-After and latency.
What admission control must give (issue: overload is answered at once):
no answer later than the deadline plus 1 s, every refusal within 1 s at p99 with
a Retry-After, every accepted request a 200.

    python -m bench.overload --burst 64 --out bench/results/overload-cpu-256x192.json
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from collections import Counter
from pathlib import Path

import httpx
import torch

from bench.common import ROOT, write_report
from bench.load import percentile, standin_server

EXAMPLES = ROOT / "service" / "examples"
FILES = {name: (f"{name}.png", (EXAMPLES / f"{name}.png").read_bytes(), "image/png")
         for name in ("masked_model", "pose", "cloth")}


async def burst(url: str, count: int, client_timeout: float) -> list[dict]:
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    async with httpx.AsyncClient(base_url=url, timeout=client_timeout, limits=limits) as client:
        async def one(i: int) -> dict:
            started = time.monotonic()
            try:
                answer = await client.post("/v1/tryon", files=FILES)
                code = None if answer.status_code == 200 else answer.json()["error"]["code"]
                return {"i": i, "status": answer.status_code, "code": code, "latency_s": time.monotonic() - started,
                        "retry_after": answer.headers.get("retry-after")}
            except httpx.HTTPError as exc:
                return {"i": i, "status": type(exc).__name__, "code": None,
                        "latency_s": time.monotonic() - started, "retry_after": None}
        return await asyncio.gather(*(one(i) for i in range(count)))


def summarise(answers: list[dict], deadline_s: float) -> dict:
    accepted = [a for a in answers if a["status"] == 200]
    refused = [a for a in answers if a["code"] == "overloaded" or a["code"] == "queue_full"]
    others = [a for a in answers if a not in accepted and a not in refused]
    refused_latency = sorted(a["latency_s"] for a in refused)
    accepted_latency = sorted(a["latency_s"] for a in accepted)
    slowest = max(a["latency_s"] for a in answers)
    checks = {
        "no_answer_later_than_deadline_plus_1s": slowest <= deadline_s + 1,
        "refused_p99_within_1s": not refused or percentile(refused_latency, 99) <= 1.0,
        "every_refusal_has_retry_after": all(a["retry_after"] for a in refused),
        "every_other_answer_is_200": not others,
    }
    return {"requests": len(answers), "by_status_and_code": dict(Counter(f"{a['status']} {a['code'] or ''}".strip()
                                                                          for a in answers)),
            "accepted": len(accepted), "refused": len(refused), "other": others,
            "accepted_latency_s": {q: percentile(accepted_latency, q) for q in (50, 99, 100)},
            "refused_latency_s": {q: percentile(refused_latency, q) for q in (50, 99, 100)},
            "retry_after_values": sorted({int(a["retry_after"]) for a in refused if a["retry_after"]}),
            "slowest_answer_s": round(slowest, 3), "deadline_s": deadline_s, "checks": checks,
            "passed": all(checks.values())}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--burst", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="bursts, one after the other on the same server")
    parser.add_argument("--image-size", default="256x192")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    deadline_s = 30.0  # the service's default TRYON_REQUEST_TIMEOUT_S
    report = {"benchmark": "overload", "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "cpu": platform.processor(),
                          "python": platform.python_version(), "torch": torch.__version__},
              "settings": "defaults (TRYON_MAX_BATCH_SIZE 8, TRYON_QUEUE_LIMIT 64, TRYON_REQUEST_TIMEOUT_S 30), "
                          f"image size {args.image_size}, stand-in weights", "rounds": []}
    with standin_server({"TRYON_IMAGE_SIZE": args.image_size}) as server:
        report["service_seconds_by_batch_size_at_start"] = server.ready.get("service_seconds_by_batch_size")
        for _ in range(args.rounds):
            load = os.getloadavg()
            answers = asyncio.run(burst(server.url, args.burst, deadline_s + 30))
            result = summarise(answers, deadline_s) | {"loadavg_before": [round(x, 2) for x in load]}
            report["rounds"].append(result)
            print(json.dumps({k: v for k, v in result.items() if k != "other"}), flush=True)
        report["service_seconds_by_batch_size_at_end"] = httpx.get(f"{server.url}/readyz").json().get(
            "service_seconds_by_batch_size")
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    report["passed"] = all(r["passed"] for r in report["rounds"])
    if args.out:
        write_report(report, args.out)
    print(json.dumps({"passed": report["passed"]}))


if __name__ == "__main__":
    main()
