"""Catalog jobs benchmark (not a timed test): a job of N garments on one replica and on two sharing one
Redis, and what a running job does to shoppers' /v1/tryon latency.

Real servers on 127.0.0.1 (``python -m service``, stand-in weights, the real network at a small image
size, one torch thread each) and a real redis-server (append-only, noeviction, as deployed). Phases:
  1. shoppers alone: /v1/tryon one at a time with pauses on replica A -> p50 with no job;
  2. one replica: a job of ``--garments`` on A alone -> wall time (submission to succeeded), images/s;
  3. shoppers during a job: the same /v1/tryon requests on A while a job of ``--garments`` runs there;
  4. two replicas: replica B started on the same Redis, a job of ``--garments`` submitted to A -> wall, images/s.
The machine and its load average (before and after each phase) are in the report: on a shared machine
the numbers move with the neighbours.

    python -m bench.jobs --out bench/results/jobs-cpu-64x64.json
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

import httpx
import torch

from bench.common import ROOT, finish_report
from bench.load import percentile, standin_server

EXAMPLES = ROOT / "service" / "examples"
IMAGES = {name: (EXAMPLES / f"{name}.png").read_bytes() for name in ("masked_model", "pose", "cloth")}


def files(garments: int) -> list:
    person = [(name, (f"{name}.png", IMAGES[name], "image/png")) for name in ("masked_model", "pose")]
    return person + [("cloth", ("cloth.png", IMAGES["cloth"], "image/png"))] * garments


@contextmanager
def redis_server(folder: Path) -> Iterator[str]:
    """redis-server on a free 127.0.0.1 port as the job store is deployed; its URL."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = free_port()
    process = subprocess.Popen([binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly",
                                "yes", "--maxmemory-policy", "noeviction", "--dir", str(folder)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        end = time.monotonic() + 20
        while subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).stdout != b"PONG\n":
            if time.monotonic() > end or process.poll() is not None:
                raise SystemExit("redis-server did not start")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run_job(client: httpx.Client, garments: int) -> dict:
    """Submits a job and polls it (0.05 s) until it ends: wall time from submission, images/s."""
    began = time.monotonic()
    answer = client.post("/v1/jobs", files=files(garments))
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]
    while (doc := client.get(f"/v1/jobs/{job_id}").json())["status"] in ("queued", "running"):
        time.sleep(0.05)
    wall = time.monotonic() - began
    done = sum(g["status"] == "succeeded" for g in doc["garments"])
    return {"status": doc["status"], "garments": garments, "succeeded": done, "wall_s": round(wall, 3),
            "images_per_s": round(done / wall, 3)}


def shoppers(client: httpx.Client, seconds: float, gap_s: float, until=None) -> dict:
    """/v1/tryon one at a time, ``gap_s`` apart, for ``seconds`` (or until ``until()`` is true)."""
    latencies: list[float] = []
    stop_at = time.monotonic() + seconds
    while time.monotonic() < stop_at and not (until and until()):
        started = time.monotonic()
        answer = client.post("/v1/tryon", files=files(1), headers={"X-Priority": "interactive"})
        if answer.status_code == 200:
            latencies.append(time.monotonic() - started)
        time.sleep(gap_s)
    latencies.sort()
    return {"n": len(latencies), "p50_s": percentile(latencies, 50), "p90_s": percentile(latencies, 90),
            "mean_s": round(statistics.fmean(latencies), 4) if latencies else None}


def phase(fn, *args, **kwargs) -> dict:
    before = loadavg()
    result = fn(*args, **kwargs)
    return {**result, "loadavg_before": before, "loadavg_after": loadavg()}


def shoppers_during_job(client: httpx.Client, garments: int, gap_s: float) -> dict:
    answer = client.post("/v1/jobs", files=files(garments))
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]

    def ended() -> bool:
        return client.get(f"/v1/jobs/{job_id}").json()["status"] not in ("queued", "running")

    latency = shoppers(client, 3600, gap_s, until=ended)
    while not ended():
        time.sleep(0.05)
    return {**latency, "job_garments": garments}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", default="64x64")
    parser.add_argument("--garments", type=int, default=50)
    parser.add_argument("--task-garments", default="2", help="TRYON_JOBS_TASK_GARMENTS: the unit replicas share")
    parser.add_argument("--shopper-seconds", type=float, default=20.0, help="length of the no-job shoppers phase")
    parser.add_argument("--gap", type=float, default=0.5, help="seconds between one shopper's requests")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    env = {"TRYON_IMAGE_SIZE": args.image_size, "TRYON_MAX_BATCH_SIZE": "1", "TRYON_JOBS_TASK_GARMENTS":
           args.task_garments, "TRYON_JOBS_MAX_GARMENTS": str(max(64, args.garments)), "OMP_NUM_THREADS": "1",
           "TRYON_REQUEST_TIMEOUT_S": "120"}
    report = {"benchmark": "jobs", "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "command": " ".join(["python -m bench.jobs", *(argv if argv is not None else sys.argv[1:])]),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg_at_start": loadavg(),
                          "note": "a shared machine: other engineers' work runs beside this one"},
              "versions": {"python": platform.python_version(), "torch": torch.__version__, "httpx": httpx.__version__,
                           "redis_server": subprocess.run(["redis-server", "--version"], capture_output=True,
                                                          text=True).stdout.strip()},
              "settings": {"image_size": args.image_size, "garments": args.garments,
                           "task_garments": args.task_garments, "max_batch_size": 1, "omp_threads_per_replica": 1,
                           "weights": "stand-in (tests/fixtures/fill_weights.py, seed 0): the real network's cost"}}
    with tempfile.TemporaryDirectory() as tmp, redis_server(Path(tmp)) as redis_url, ExitStack() as replicas:
        env["TRYON_JOBS_URL"] = redis_url
        a = replicas.enter_context(standin_server(env))
        with httpx.Client(base_url=a.url, timeout=600) as client:
            run_job(client, 2)  # warm: the store's groups, the first encodes
            phases = {"shoppers_no_job": phase(shoppers, client, args.shopper_seconds, args.gap),
                      "one_replica": phase(run_job, client, args.garments),
                      "shoppers_during_job": phase(shoppers_during_job, client, args.garments, args.gap)}
            replicas.enter_context(standin_server(env))
            run_job(client, 4)  # warm B too (tasks of TRYON_JOBS_TASK_GARMENTS spread over both)
            phases["two_replicas"] = phase(run_job, client, args.garments)
    report["phases"] = phases
    no_job, during = phases["shoppers_no_job"]["p50_s"], phases["shoppers_during_job"]["p50_s"]
    report["results"] = {
        "one_replica": {k: phases["one_replica"][k] for k in ("wall_s", "images_per_s")},
        "two_replicas": {k: phases["two_replicas"][k] for k in ("wall_s", "images_per_s")},
        "two_replicas_speedup": round(phases["one_replica"]["wall_s"] / phases["two_replicas"]["wall_s"], 3),
        "shoppers_p50_s": {"no_job": no_job, "during_job": during},
        "shoppers_p50_ratio": round(during / no_job, 3) if no_job and during else None}
    finish_report(report, args.out, report["results"])


if __name__ == "__main__":
    main()
