"""Priorities benchmark (not a timed test): does bulk work leave shoppers alone?

One server (stand-in weights, the CPU setting TRYON_MAX_BATCH_SIZE=1 unless --max-batch).
Four phases on it, in one run:
  1. interactive alone: requests one at a time with pauses -> the unloaded p50;
  2. bulk alone: ``--bulk-clients`` closed-loop clients sending priority=bulk -> bulk img/s;
  3. both: the same bulk clients saturating the server, and interactive requests arriving
     at random (exponential gaps, mean ``--gap`` s) -> loaded interactive p50, bulk img/s;
  4. (--garments N) the bulk clients send /v1/tryon/batch jobs of N garments instead.
Targets (issue: priorities): loaded interactive p50 <= 1.5x unloaded; bulk img/s >= 80% of alone.

    python -m bench.priorities --out bench/results/priorities-cpu-256x192.json
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import statistics
import time
from pathlib import Path

import httpx
import torch

from bench.common import ROOT, finish_report
from bench.load import percentile, standin_server

EXAMPLES = ROOT / "service" / "examples"
IMAGES = {name: (EXAMPLES / f"{name}.png").read_bytes() for name in ("masked_model", "pose", "cloth")}


def files(garments: int = 0) -> list:
    person = [(name, (f"{name}.png", IMAGES[name], "image/png")) for name in ("masked_model", "pose")]
    cloths = [("cloth", ("cloth.png", IMAGES["cloth"], "image/png"))] * max(1, garments)
    return person + cloths


async def interactive(client: httpx.AsyncClient, stop_at: float, gap_s: float, rng: random.Random,
                      latencies: list[float]) -> None:
    while time.monotonic() < stop_at:
        await asyncio.sleep(rng.expovariate(1 / gap_s))
        started = time.monotonic()
        answer = await client.post("/v1/tryon", files=files(), headers={"X-Priority": "interactive"})
        if answer.status_code == 200:
            latencies.append(time.monotonic() - started)


async def bulk(client: httpx.AsyncClient, stop_at: float, garments: int, images: list[int], failures: list) -> None:
    route = "/v1/tryon/batch" if garments else "/v1/tryon"
    while time.monotonic() < stop_at:
        answer = await client.post(route, files=files(garments), headers={"X-Priority": "bulk"})
        await answer.aread()
        if answer.status_code == 200:
            images[0] += garments or 1
        else:
            failures.append(answer.status_code)


async def phase(url: str, seconds: float, *, bulk_clients: int, garments: int, gap_s: float | None) -> dict:
    latencies: list[float] = []
    images, failures = [0], []
    rng = random.Random(0)
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        stop_at = time.monotonic() + seconds
        load = os.getloadavg()
        began = time.monotonic()
        tasks = [bulk(client, stop_at, garments, images, failures) for _ in range(bulk_clients)]
        if gap_s is not None:
            tasks.append(interactive(client, stop_at, gap_s, rng, latencies))
        await asyncio.gather(*tasks)
        elapsed = time.monotonic() - began
    latencies.sort()
    return {"seconds": round(elapsed, 1), "loadavg_before": [round(x, 2) for x in load],
            "interactive": {"n": len(latencies), "p50_s": percentile(latencies, 50), "p90_s": percentile(latencies, 90),
                            "mean_s": round(statistics.fmean(latencies), 4) if latencies else None},
            "bulk_images": images[0], "bulk_images_per_s": round(images[0] / elapsed, 4) if bulk_clients else None,
            "bulk_failures": failures[:20]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", default="256x192")
    parser.add_argument("--max-batch", default="1")
    parser.add_argument("--bulk-clients", type=int, default=2)
    parser.add_argument("--gap", type=float, default=4.0, help="mean seconds between interactive arrivals")
    parser.add_argument("--seconds", type=float, default=90.0, help="length of each loaded phase")
    parser.add_argument("--garments", type=int, default=0, help="also a phase of /v1/tryon/batch jobs of N garments")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    report = {"benchmark": "priorities", "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
              "settings": {"image_size": args.image_size, "max_batch_size": args.max_batch,
                           "bulk_clients": args.bulk_clients, "interactive_gap_s": args.gap}}
    with standin_server({"TRYON_IMAGE_SIZE": args.image_size, "TRYON_MAX_BATCH_SIZE": args.max_batch,
                         "TRYON_REQUEST_TIMEOUT_S": "120"}) as server:
        url = server.url
        alone = asyncio.run(phase(url, args.seconds / 2, bulk_clients=0, garments=0, gap_s=args.gap / 4))
        bulk_alone = asyncio.run(phase(url, args.seconds / 2, bulk_clients=args.bulk_clients, garments=0,
                                       gap_s=None))
        both = asyncio.run(phase(url, args.seconds, bulk_clients=args.bulk_clients, garments=0, gap_s=args.gap))
        report["phases"] = {"interactive_alone": alone, "bulk_alone": bulk_alone, "both": both}
        if args.garments:
            garments_alone = asyncio.run(phase(url, args.seconds / 2, bulk_clients=args.bulk_clients,
                                               garments=args.garments, gap_s=None))
            garments_both = asyncio.run(phase(url, args.seconds, bulk_clients=args.bulk_clients,
                                              garments=args.garments, gap_s=args.gap))
            report["phases"] |= {"garments_alone": garments_alone, "garments_both": garments_both}
    phases = report["phases"]
    unloaded = phases["interactive_alone"]["interactive"]["p50_s"]
    report["results"] = {}
    for alone_name, both_name in (("bulk_alone", "both"), ("garments_alone", "garments_both")):
        if both_name not in phases:
            continue
        loaded = phases[both_name]["interactive"]["p50_s"]
        kept = phases[both_name]["bulk_images_per_s"] / phases[alone_name]["bulk_images_per_s"]
        report["results"][both_name] = {
            "interactive_p50_ratio": round(loaded / unloaded, 3), "bulk_throughput_kept": round(kept, 3),
            "meets_targets": loaded / unloaded <= 1.5 and kept >= 0.8}
    finish_report(report, args.out)


if __name__ == "__main__":
    main()
