"""Many garments, one person: POST /v1/tryon/batch against N separate /v1/tryon
requests (not a timed test).

Starts ``python -m service`` once and, in the same run, measures both ways
interleaved (the order alternates every repetition, so a change in the
machine's load hits both alike), for each N:

- ``batch``: one /v1/tryon/batch request with N garments (the person is read,
  drawn and encoded by the network once);
- ``separate``: N /v1/tryon requests sent at once (the server batches them,
  the most favourable case for separate requests; the person is drawn and
  encoded N times).

The person is a photo + keypoints (tests/fixtures/prep), the garments are
variants of the example garment. Wall time per way, the engine time the
server reports (Server-Timing), and the load average around each
measurement go to JSON.

``--engine`` measures the engine alone, in this process, without HTTP:
``Engine.infer_garments`` (person encoded once) against ``Engine.infer`` of
the same N items (person encoded N times, as N separate requests batched
together), interleaved the same way. Less noise than over HTTP on a busy
machine, and it isolates the one thing the batch endpoint saves.

    python -m bench.garments --sizes 4,8 --repeats 3 --threads 1 --out bench/results/garments-cpu-256x192.json
    python -m bench.garments --engine --sizes 4,8 --repeats 4 --threads 1 \
        --out bench/results/garments-cpu-256x192-engine.json
"""
from __future__ import annotations

import argparse
import concurrent.futures
import io
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image, ImageOps

from bench.common import FIXTURES, finish_report, standin_weights_file
from bench.load import EXAMPLES, start_server, wait_ready

PERSON = (FIXTURES / "prep" / "front_person.png").read_bytes()
KEYPOINTS = (FIXTURES / "prep" / "front_keypoints.json").read_text()


def garments(n: int) -> list[bytes]:
    """N distinct garments: the example, mirrored, inverted, rotated, in turn."""
    base = Image.open(EXAMPLES / "cloth.png").convert("RGB")
    looks = [lambda im: im, ImageOps.mirror, ImageOps.invert, lambda im: im.rotate(8, fillcolor="white"),
             ImageOps.grayscale, ImageOps.flip, lambda im: ImageOps.posterize(im, 3), ImageOps.solarize]
    out = []
    for i in range(n):
        buf = io.BytesIO()
        looks[i % len(looks)](base).convert("RGB").save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def server_inference_ms(answer: httpx.Response) -> float:
    timing = dict(item.split(";dur=") for item in answer.headers["server-timing"].split(", "))
    return float(timing["inference"])


def one_batch(url: str, cloths: list[bytes], timeout: float) -> dict:
    """One /v1/tryon/batch request read as NDJSON, line by line as the server streams it."""
    files = [("person", ("person.png", PERSON, "image/png"))] + [("cloth", (f"c{i}.png", c, "image/png"))
                                                                for i, c in enumerate(cloths)]
    start = time.perf_counter()
    arrivals, lines = [], []
    with httpx.stream("POST", f"{url}/v1/tryon/batch", files=files, data={"keypoints": KEYPOINTS},
                      headers={"Accept": "application/x-ndjson"}, timeout=timeout) as answer:
        answer.raise_for_status()
        chunk = int(answer.headers["x-garment-chunk"])
        for line in answer.iter_lines():
            if line:
                arrivals.append(time.perf_counter() - start)
                lines.append(json.loads(line))
    if any(item.get("status", 200) != 200 for item in lines):
        raise RuntimeError(f"a garment failed: {[item for item in lines if item.get('status', 200) != 200]}")
    # The parts of one chunk share its engine time: count each chunk once.
    inference_ms = sum(item["inference_ms"] for item in lines[::chunk])
    return {"wall_s": round(arrivals[-1], 3), "first_part_s": round(arrivals[0], 3),
            "inference_s": round(inference_ms / 1000, 3), "chunk": chunk}


def separate(url: str, cloths: list[bytes], timeout: float) -> dict:
    def one(cloth: bytes) -> tuple[httpx.Response, float]:
        files = {"person": ("person.png", PERSON, "image/png"), "cloth": ("c.png", cloth, "image/png")}
        answer = httpx.post(f"{url}/v1/tryon", files=files, data={"keypoints": KEYPOINTS}, timeout=timeout)
        answer.raise_for_status()
        return answer, time.perf_counter() - start

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(len(cloths)) as pool:
        answers, done_s = zip(*pool.map(one, cloths))
    wall = time.perf_counter() - start
    # Requests batched together report the same engine run: count each run once.
    runs = {(a.headers["x-batch-size"], server_inference_ms(a)) for a in answers}
    return {"wall_s": round(wall, 3), "first_part_s": round(min(done_s), 3),
            "inference_s": round(sum(ms for _, ms in runs) / 1000, 3),
            "batches": sorted(int(size) for size, _ in runs)}


class EngineWays:
    """The two ways, in process: one person's tensors with N garments' tensors."""

    def __init__(self, image_size: str, max_batch_size: int, sampler: str):
        import torch

        from model.engine import Engine, EngineConfig
        from model.images import assemble_inputs
        from model.person.person_inputs import person_images

        height, width = (int(v) for v in image_size.split("x"))
        self.engine = Engine(EngineConfig(device="cpu", batch_sizes=tuple(range(1, max_batch_size + 1)),
                                          image_size_hw=(height, width), sampler=sampler))
        person = person_images(person=PERSON, keypoints=KEYPOINTS, size_hw=(height, width))
        # The tensors the service would make: the person's once, each garment in the person's frame.
        inputs = [assemble_inputs(person.masked_model_levels, person.pose_levels, person.frame, c) for c in garments(8)]
        self.pose, self.masked = inputs[0].pose[None], inputs[0].masked_model[None]
        self.cloths = lambda n: torch.stack([inputs[i % len(inputs)].cloth for i in range(n)])
        self.batch(None, 2, None), self.separate(None, 2, None)  # first calls, not recorded

    def batch(self, _url, cloths_n: int, _timeout) -> dict:
        cloths = self.cloths(cloths_n)
        start = time.perf_counter()
        self.engine.infer_garments(self.pose, self.masked, cloths)
        elapsed = round(time.perf_counter() - start, 3)
        return {"wall_s": elapsed, "inference_s": elapsed}

    def separate(self, _url, cloths_n: int, _timeout) -> dict:
        cloths = self.cloths(cloths_n)
        n = cloths.shape[0]
        start = time.perf_counter()
        self.engine.infer(self.pose.expand(n, -1, -1, -1), self.masked.expand(n, -1, -1, -1), cloths)
        elapsed = round(time.perf_counter() - start, 3)
        return {"wall_s": elapsed, "inference_s": elapsed}


def measure(url: str | None, sizes: list[int], repeats: int, timeout: float, ways: dict | None = None) -> list[dict]:
    ways = ways or {"batch": lambda u, n, t: one_batch(u, garments(n), t),
                    "separate": lambda u, n, t: separate(u, garments(n), t)}
    runs = []
    for rep in range(repeats):
        for n in sizes:
            order = ["batch", "separate"] if rep % 2 == 0 else ["separate", "batch"]
            for way in order:
                load = os.getloadavg()[0]
                result = ways[way](url, n, timeout)
                runs.append({"repeat": rep, "garments": n, "way": way, **result,
                             "loadavg_1m": [round(load, 2), round(os.getloadavg()[0], 2)]})
                print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    return runs


def summarise(runs: list[dict], sizes: list[int]) -> list[dict]:
    def median(n: int, way: str, key: str) -> float:
        return round(statistics.median(r[key] for r in runs if r["garments"] == n and r["way"] == way), 3)

    summary = []
    for n in sizes:
        wall = {way: median(n, way, "wall_s") for way in ("batch", "separate")}
        engine = {way: median(n, way, "inference_s") for way in ("batch", "separate")}
        # Over HTTP only: when the first result reached the client.
        first = ({way: median(n, way, "first_part_s") for way in ("batch", "separate")}
                 if all("first_part_s" in r for r in runs) else None)
        summary.append({"garments": n, "median_wall_s": wall, "median_first_result_s": first,
                        "median_inference_s": engine,
                        "wall_saving": round(1 - wall["batch"] / wall["separate"], 3),
                        "inference_saving": round(1 - engine["batch"] / engine["separate"], 3)})
    return summary


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="4,8", help="garment counts N (default 4,8)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--image-size", default="256x192")
    parser.add_argument("--max-batch-size", default="8")
    parser.add_argument("--sampler", default="torch")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS for the server (default: torch's own)")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--engine", action="store_true", help="the engine alone, in process, no HTTP")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    sizes = [int(n) for n in args.sizes.split(",")]

    report = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": {
        "cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}}
    if args.engine:
        if args.threads:
            import torch
            torch.set_num_threads(args.threads)
        engine = EngineWays(args.image_size, int(args.max_batch_size), args.sampler)
        report["config"] = {"mode": "engine", "sizes": sizes, "repeats": args.repeats, "omp_threads": args.threads,
                            "image_size": args.image_size, "max_batch_size": int(args.max_batch_size)}
        report["runs"] = measure(None, sizes, args.repeats, args.timeout,
                                 {"batch": engine.batch, "separate": engine.separate})
    else:
        measure_server(args, sizes, report)
    report["summary"] = summarise(report["runs"], sizes)
    report["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    finish_report(report, args.out)


def measure_server(args, sizes: list[int], report: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        port = 19000 + os.getpid() % 1000
        env = {"TRYON_WEIGHTS": str(standin_weights_file(Path(tmp))), "TRYON_IMAGE_SIZE": args.image_size,
               "TRYON_SAMPLER": args.sampler, "TRYON_MAX_BATCH_SIZE": args.max_batch_size,
               "TRYON_MAX_GARMENTS": str(max(sizes)), "TRYON_REQUEST_TIMEOUT_S": str(args.timeout),
               "TRYON_LOG_LEVEL": "warning",
               "TRYON_CACHE_BYTES": "0"}  # the engine path: repeated inputs must not be cache hits
        if args.threads:
            env["OMP_NUM_THREADS"] = str(args.threads)
        url = f"http://127.0.0.1:{port}"
        process = start_server(port, env, Path(tmp) / "server.log")
        try:
            report["server"] = wait_ready(url, process)
            report["config"] = {"mode": "http", "sizes": sizes, "repeats": args.repeats, "omp_threads": args.threads,
                                "person": "photo + keypoints (tests/fixtures/prep/front_*)"}
            separate(url, garments(2), args.timeout)  # warm the drawing and HTTP paths, not recorded
            one_batch(url, garments(2), args.timeout)
            report["runs"] = measure(url, sizes, args.repeats, args.timeout)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(120)


if __name__ == "__main__":
    main()
