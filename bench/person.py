"""Person detection benchmark (not a timed test).

1. Detection: milliseconds per photo for the real photographs of tests/fixtures/photos (as they
   are, and scaled up to a phone camera's 3024 px long side), BlazePose + face count, and the
   whole person preparation (detect, then draw the masked model and pose map). Wall time, and
   the process's CPU time (all of mediapipe's threads), which a busy machine inflates less.
2. Through a real server, in one run: /v1/tryon with the person photo alone against /v1/tryon
   with the masked model and pose map drawn from the same photo beforehand, requests alternating
   so that the machine's load falls on both alike; Server-Timing stages are kept per request.

    python -m bench.person --rounds 12 --out bench/results/person-cpu.json
"""
from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image

from bench.common import ROOT, standin_weights_file, write_report
from bench.cpu_model import cpu_model_name
from bench.load import start_server, wait_ready
from model.images import encode_image
from model.person import DetectionError, get_detector, person_images, warm

PHOTOS = ROOT / "tests" / "fixtures" / "photos"
CLOTH = ROOT / "service" / "examples" / "cloth.png"
PHONE_SIDE = 3024


def jpeg(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, "JPEG", quality=92)
    return out.getvalue()


def summary(values_ms: list[float]) -> dict:
    ordered = sorted(values_ms)
    return {"n": len(ordered), "median_ms": round(statistics.median(ordered), 2),
            "p90_ms": round(ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))], 2),
            "min_ms": round(ordered[0], 2)}


def photos() -> dict[str, Image.Image]:
    found = {p.stem: Image.open(p).convert("RGB") for p in sorted(PHOTOS.glob("*.jpg"))}
    grace = found["grace_hopper"]
    scale = PHONE_SIDE / max(grace.size)
    found[f"grace_hopper_{PHONE_SIDE}px"] = grace.resize((round(grace.width * scale), round(grace.height * scale)),
                                                         Image.BICUBIC)
    return found


def time_detection(rounds: int) -> list[dict]:
    detector = get_detector()
    results = []
    for name, img in photos().items():
        data = jpeg(img)
        detect_ms, detect_cpu_ms, prepare_ms, outcome = [], [], [], "person"
        for _ in range(rounds):
            mark, cpu_mark = time.perf_counter(), time.process_time()
            try:
                detector.detect(img)
            except DetectionError as exc:
                outcome = exc.code
            detect_ms.append((time.perf_counter() - mark) * 1000)
            detect_cpu_ms.append((time.process_time() - cpu_mark) * 1000)
            mark = time.perf_counter()
            try:
                person_images(person=data)
            except DetectionError:
                pass
            prepare_ms.append((time.perf_counter() - mark) * 1000)
        results.append({"photo": name, "size_wh": list(img.size), "outcome": outcome,
                        "detect": summary(detect_ms), "detect_process_cpu": summary(detect_cpu_ms),
                        "person_images_from_jpeg": summary(prepare_ms)})
    return results


def server_timing(header: str) -> dict[str, float]:
    return {name: float(value) for name, _, value in (item.partition(";dur=") for item in header.split(", "))}


def compare_requests(rounds: int, image_size: str) -> dict:
    """Alternating person-only and masked-model requests against one server."""
    grace = (PHOTOS / "grace_hopper.jpg").read_bytes()
    height, width = map(int, image_size.split("x"))
    drawn = person_images(person=grace, size_hw=(height, width))
    masked, pose = encode_image(drawn.masked_model, "png"), encode_image(drawn.pose, "png")
    cloth = CLOTH.read_bytes()
    forms = {
        "person_photo_only": {"person": ("p.jpg", grace, "image/jpeg"), "cloth": ("c.png", cloth, "image/png")},
        "masked_model_and_pose": {"masked_model": ("m.png", masked, "image/png"),
                                  "pose": ("q.png", pose, "image/png"), "cloth": ("c.png", cloth, "image/png")},
    }
    with tempfile.TemporaryDirectory() as tmp:
        port = 18000 + os.getpid() % 1000
        url = f"http://127.0.0.1:{port}"
        env = {"TRYON_WEIGHTS": str(standin_weights_file(Path(tmp))), "TRYON_IMAGE_SIZE": image_size,
               "TRYON_MAX_BATCH_SIZE": "1"}
        process = start_server(port, env, Path(tmp) / "server.log")
        try:
            ready = wait_ready(url, process)
            latency: dict[str, list[float]] = {name: [] for name in forms}
            stages: dict[str, list[dict]] = {name: [] for name in forms}
            with httpx.Client(base_url=url, timeout=120) as client:
                for name, files in forms.items():  # one unmeasured request of each
                    client.post("/v1/tryon", files=files).raise_for_status()
                for _ in range(rounds):
                    for name, files in forms.items():
                        mark = time.perf_counter()
                        answer = client.post("/v1/tryon", files=files)
                        latency[name].append((time.perf_counter() - mark) * 1000)
                        answer.raise_for_status()
                        stages[name].append(server_timing(answer.headers["server-timing"]))
        finally:
            process.terminate()
            process.wait(60)
    report = {"image_size": image_size, "server": {k: ready.get(k) for k in ("device", "weights", "sampler")}}
    for name in forms:
        names = sorted({k for timing in stages[name] for k in timing})
        report[name] = {"latency": summary(latency[name]),
                        "server_timing_median_ms": {k: round(statistics.median(t.get(k, 0.0) for t in stages[name]), 2)
                                                    for k in names}}
    report["person_only_over_masked_model_median"] = round(
        report["person_photo_only"]["latency"]["median_ms"] / report["masked_model_and_pose"]["latency"]["median_ms"],
        3)
    return report


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--image-size", default="256x192", help="the server's TRYON_IMAGE_SIZE")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "person-cpu.json"))
    args = p.parse_args(argv)
    import mediapipe

    load_start = os.getloadavg()
    warm_s = warm()
    report = {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "cpu": cpu_model_name(),
              "cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
              "mediapipe": mediapipe.__version__, "loadavg_at_start": [round(x, 2) for x in load_start],
              "detector_load_and_warm_s": round(warm_s, 3),
              "detection": time_detection(args.rounds),
              "tryon_requests": compare_requests(args.rounds, args.image_size),
              "loadavg_at_end": [round(x, 2) for x in os.getloadavg()]}
    print(write_report(report, Path(args.out)))


if __name__ == "__main__":
    main()
