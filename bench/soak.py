"""Soak benchmark (not a timed test): does anything leak over time?

One server (stand-in weights, 64x64 so that many requests fit in the time, a small
queue so that bursts overflow it) under ``--minutes`` of mixed traffic from a few
concurrent loops: good requests of every endpoint, bad inputs of every kind the tests
know, clients that hang up mid-upload and while queued, and bursts past the queue.
Every 10 s it samples the server's resident memory, open file descriptors and threads
(from /proc). Pass: resident memory after the first minute grows by less than 5%,
descriptors and threads return to their level once traffic stops, and no 5xx answer
other than the documented 503/504.

    python -m bench.soak --minutes 10 --out bench/results/soak-cpu-64x64.json
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import random
import socket
import time
from collections import Counter
from pathlib import Path

import httpx
import torch

from bench.common import ROOT, write_report
from bench.load import standin_server

FIXTURES = ROOT / "tests" / "fixtures" / "service"
IMAGES = {name: (FIXTURES / f"{name}_64x64.png").read_bytes() for name in ("masked_model", "pose", "cloth")}
KEYPOINTS = json.loads((ROOT / "tests" / "fixtures" / "prep" / "front_keypoints.json").read_text())
PERSON = (ROOT / "tests" / "fixtures" / "prep" / "front_person.png").read_bytes()
SAMPLE_EVERY_S = 10
DOCUMENTED_5XX = {503, 504}


def proc_stats(pid: int) -> dict:
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
    return {"rss_mb": round(rss_kb / 1024, 1), "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "threads": len(os.listdir(f"/proc/{pid}/task"))}


def multipart(**fields) -> list:
    return [(name, (f"{name}.png", data, "image/png")) for name, data in fields.items()]


# Each request kind: (name, method, path, keyword arguments for httpx). Bad ones must get a 4xx.
GOOD = [
    ("tryon", "/v1/tryon", {"files": multipart(**IMAGES)}),
    ("tryon_json", "/v1/tryon", {"json": {k: base64.b64encode(v).decode() for k, v in IMAGES.items()}
                                 | {"format": "png"}}),
    ("tryon_keypoints", "/v1/tryon", {"files": multipart(person=PERSON, cloth=IMAGES["cloth"]),
                                      "data": {"keypoints": json.dumps(KEYPOINTS)}}),
    ("batch", "/v1/tryon/batch", {"files": multipart(masked_model=IMAGES["masked_model"], pose=IMAGES["pose"])
                                  + multipart(cloth=IMAGES["cloth"]) * 3}),
    ("prepare", "/v1/prepare", {"files": multipart(person=PERSON), "data": {"keypoints": json.dumps(KEYPOINTS)}}),
]
BAD = [
    ("not_an_image", "/v1/tryon", {"files": multipart(masked_model=b"text, not an image", pose=IMAGES["pose"],
                                                      cloth=IMAGES["cloth"])}),
    ("truncated_png", "/v1/tryon", {"files": multipart(masked_model=IMAGES["masked_model"][:200],
                                                       pose=IMAGES["pose"], cloth=IMAGES["cloth"])}),
    ("missing_cloth", "/v1/tryon", {"files": multipart(masked_model=IMAGES["masked_model"], pose=IMAGES["pose"])}),
    ("ambiguous_mix", "/v1/tryon", {"files": multipart(masked_model=IMAGES["masked_model"], person=PERSON,
                                                       cloth=IMAGES["cloth"])}),
    ("bad_json", "/v1/tryon", {"content": b"{not json", "headers": {"Content-Type": "application/json"}}),
    ("nested_json", "/v1/tryon", {"content": b"[" * 100_000, "headers": {"Content-Type": "application/json"}}),
    ("bad_keypoints", "/v1/tryon", {"files": multipart(person=PERSON, cloth=IMAGES["cloth"]),
                                    "data": {"keypoints": "[1, 2, 3]"}}),
    ("bad_option", "/v1/tryon", {"files": multipart(**IMAGES), "params": {"format": "gif"}}),
    ("bad_priority", "/v1/tryon", {"files": multipart(**IMAGES), "params": {"priority": "urgent"}}),
    ("bad_timeout", "/v1/tryon", {"files": multipart(**IMAGES), "headers": {"X-Request-Timeout": "-1"}}),
    ("wrong_media_type", "/v1/tryon", {"content": b"x", "headers": {"Content-Type": "text/plain"}}),
    ("blocked_url", "/v1/tryon", {"data": {"masked_model": "http://127.0.0.1:9/x.png", "pose": "http://10.0.0.1/p.png",
                                           "cloth": "http://169.254.169.254/c.png"}}),
    ("unknown_route", "/v1/nothing", {}),
]


async def one(client: httpx.AsyncClient, kind: tuple, statuses: Counter, bad_5xx: list) -> None:
    name, path, kwargs = kind
    try:
        answer = await client.post(path, **kwargs)
        await answer.aread()
    except httpx.HTTPError as exc:
        statuses[f"{name} {type(exc).__name__}"] += 1
        return
    statuses[f"{name} {answer.status_code}"] += 1
    if answer.status_code >= 500 and answer.status_code not in DOCUMENTED_5XX:
        bad_5xx.append({"kind": name, "status": answer.status_code, "body": answer.text[:300]})


def hang_up(port: int, while_queued: bool) -> None:
    """A client that sends half its upload and leaves, or all of it and leaves while queued."""
    request = httpx.Request("POST", f"http://127.0.0.1:{port}/v1/tryon", files=multipart(**IMAGES))
    body = request.read()
    head = (f"POST /v1/tryon HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {request.headers['content-type']}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head + (body if while_queued else body[:len(body) // 2]))
        time.sleep(0.05)


async def traffic(url: str, port: int, stop_at: float, burst: int, seed: int, statuses: Counter,
                  bad_5xx: list) -> None:
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        while time.monotonic() < stop_at:
            roll = rng.random()
            if roll < 0.45:
                await one(client, rng.choice(GOOD), statuses, bad_5xx)
            elif roll < 0.85:
                await one(client, rng.choice(BAD), statuses, bad_5xx)
            elif roll < 0.95:
                await asyncio.to_thread(hang_up, port, rng.random() < 0.5)
                statuses["hang_up"] += 1
            else:
                await asyncio.gather(*(one(client, GOOD[0], statuses, bad_5xx) for _ in range(burst)))


async def soak(url: str, port: int, pid: int, minutes: float, loops: int, burst: int) -> dict:
    statuses: Counter = Counter()
    bad_5xx: list = []
    samples = []
    began = time.monotonic()
    stop_at = began + minutes * 60
    workers = [asyncio.create_task(traffic(url, port, stop_at, burst, seed, statuses, bad_5xx))
               for seed in range(loops)]
    while time.monotonic() < stop_at:
        samples.append({"t_s": round(time.monotonic() - began, 1), **proc_stats(pid),
                        "requests": sum(statuses.values())})
        await asyncio.sleep(SAMPLE_EVERY_S)
    await asyncio.gather(*workers)
    await asyncio.sleep(15)  # traffic over: queued work, connections and idle pool threads (anyio's: 10 s) end
    return {"statuses": dict(sorted(statuses.items())), "undocumented_5xx": bad_5xx, "samples": samples,
            "idle_after": proc_stats(pid)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--loops", type=int, default=4, help="concurrent traffic loops")
    parser.add_argument("--burst", type=int, default=24, help="requests at once in a burst (past the queue of 8)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    report = {"benchmark": "soak", "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                          "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]},
              "settings": {"image_size": "64x64", "queue_limit": 8, "max_batch_size": 4, "minutes": args.minutes,
                           "loops": args.loops, "burst": args.burst}}
    with standin_server({"TRYON_IMAGE_SIZE": "64x64", "TRYON_QUEUE_LIMIT": "8", "TRYON_MAX_BATCH_SIZE": "4",
                         "TRYON_URL_CONNECT_TIMEOUT_S": "1"}) as server:
        report["idle_before"] = proc_stats(server.process.pid)
        report |= asyncio.run(soak(server.url, server.port, server.process.pid, args.minutes, args.loops,
                                   args.burst))
        report["healthz_after"] = httpx.get(f"{server.url}/healthz").status_code
    report["exit_status"] = server.exit_status
    after_first_minute = next(s for s in report["samples"] if s["t_s"] >= 60)
    last = report["samples"][-1]
    growth = (last["rss_mb"] - after_first_minute["rss_mb"]) / after_first_minute["rss_mb"]
    report["checks"] = {
        "rss_growth_after_first_minute": round(growth, 4),
        "rss_growth_under_5_percent": growth < 0.05,
        "fds_back_to_idle_level": report["idle_after"]["fds"] <= report["idle_before"]["fds"],
        # Thread pools grow to their size under load and shrink when idle (anyio's workers after 10 s):
        # once idle, no more threads than the busiest first minute had.
        "threads_no_more_than_in_the_first_minute": report["idle_after"]["threads"] <= max(
            s["threads"] for s in report["samples"] if s["t_s"] <= 60),
        "no_undocumented_5xx": not report["undocumented_5xx"],
        "healthy_after": report["healthz_after"] == 200 and report["exit_status"] == 0,
    }
    report["passed"] = all(v for k, v in report["checks"].items() if k != "rss_growth_after_first_minute")
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if args.out:
        write_report(report, args.out)
    print(json.dumps({k: report[k] for k in ("checks", "passed", "statuses", "undocumented_5xx")}, indent=2))


if __name__ == "__main__":
    main()
