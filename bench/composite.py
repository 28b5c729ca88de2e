"""What framing and compositing cost a request, against today's size=model path, in one run (not a
timed test).

Per request, on one core (the process pinned to one CPU, torch at one thread), CPU time of what the
codec does around the engine for a person photo with its keypoints (no detection, no inference:
the same fixed result tensor stands for the model's):

- ``letterbox_model``: the path before framing (the whole photo letterboxed), size=model: decode,
  draw the masked model and pose map, place the garment, encode the 192 x 256 result as JPEG;
- ``framed_model``: the same with the person framed (the crop box), size=model;
- ``framed_original``: framed, size=original: the result composited into the photo and the photo
  encoded as JPEG at its size.

Alternating the three each round, so that the machine's load falls on all alike. Photos: the
suite's astronaut (tests/fixtures/photos) scaled to fill 1024 x 1536 and 3000 x 4000 frames, with
a little grain (sigma 3 levels) so that JPEG has a camera photo's detail to encode, as JPEG 92.
Then, in a fresh process per photo, the resident memory a whole size=original request and its
composite and encode alone add (RSS sampled every millisecond on a thread).

    python -m bench.composite --rounds 40 --out bench/results/composite-cpu.json
"""
from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time

import numpy as np
import PIL
import torch
from PIL import Image

from bench.common import ROOT, write_report
from bench.cpu_model import cpu_model_name
from model.images import assemble_inputs, encode_image, output_image
from model.person import get_detector, person_images

PHOTO = ROOT / "tests" / "fixtures" / "photos" / "astronaut.jpg"
CLOTH = (ROOT / "service" / "examples" / "cloth.png").read_bytes()
SIZES = ((1024, 1536), (3000, 4000))
PATHS = {"letterbox_model": (False, "model"), "framed_model": (True, "model"), "framed_original": (True, "original")}
QUALITY = 90  # the service's default


def scene(size_wh: tuple[int, int]) -> bytes:
    """The astronaut filling a frame of ``size_wh`` (cut off at the sides), with grain, as JPEG."""
    width, height = size_wh
    side = max(width, height)
    img = Image.open(PHOTO).convert("RGB").resize((side, side), Image.BICUBIC)
    img = img.crop(((side - width) // 2, 0, (side - width) // 2 + width, height))
    grain = np.random.default_rng(0).normal(0, 3, (height, width, 1))
    img = Image.fromarray(np.clip(np.asarray(img, dtype=np.float32) + grain, 0, 255).astype(np.uint8))
    out = io.BytesIO()
    img.save(out, "JPEG", quality=92)
    return out.getvalue()


def request(data: bytes, keypoints, result: torch.Tensor, framing: bool, size: str) -> dict[str, float]:
    """One request's codec work; CPU milliseconds per stage."""
    marks = [time.process_time()]
    person = person_images(person=data, keypoints=keypoints, framing=framing, keep_photo=size == "original")
    inputs = assemble_inputs(person.masked_model_levels, person.pose_levels, person.output_frame, CLOTH)
    marks.append(time.process_time())
    img = output_image(result, inputs.person_frame, size)
    marks.append(time.process_time())
    encode_image(img, "jpeg", QUALITY)
    marks.append(time.process_time())
    stages = dict(zip(("decode_and_draw", "composite", "encode"), np.diff(marks) * 1000))
    return {**stages, "total": (marks[-1] - marks[0]) * 1000}


def summary(values: list[float]) -> dict:
    ordered = sorted(values)
    return {"n": len(ordered), "median_ms": round(statistics.median(ordered), 2),
            "p90_ms": round(ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))], 2),
            "min_ms": round(ordered[0], 2)}


def cpu_per_request(size_wh: tuple[int, int], rounds: int) -> dict:
    data = scene(size_wh)
    photo = Image.open(io.BytesIO(data)).convert("RGB")
    keypoints = get_detector().detect(photo).keypoints  # found once: detection is not what is measured
    result = torch.rand((3, 256, 192)) * 2 - 1
    times: dict[str, list[dict]] = {name: [] for name in PATHS}
    for name, (framing, size) in PATHS.items():  # one unmeasured request each
        request(data, keypoints, result, framing, size)
    for _ in range(rounds):
        for name, (framing, size) in PATHS.items():
            times[name].append(request(data, keypoints, result, framing, size))
    framed = person_images(person=data, keypoints=keypoints)
    report = {"photo_wh": list(size_wh), "jpeg_bytes": len(data), "box": list(framed.box)}
    for name in PATHS:
        report[name] = {stage: summary([t[stage] for t in times[name]]) for stage in times[name][0]}
    baseline = report["letterbox_model"]["total"]["median_ms"]
    report["added_ms_median"] = {name: round(report[name]["total"]["median_ms"] - baseline, 2)
                                 for name in ("framed_model", "framed_original")}
    return report


class RssSampler:
    """The process's resident memory, sampled every millisecond on a thread; ``peak`` since ``start``."""

    def __init__(self):
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.peak = 0
        self._stop = threading.Event()

    def now(self) -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * self.page

    def __enter__(self) -> "RssSampler":
        self.start_rss = self.peak = self.now()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            time.sleep(0.001)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now())

    @property
    def growth_mb(self) -> float:
        return round((self.peak - self.start_rss) / 2**20, 1)


def rss_child(size_wh: tuple[int, int]) -> dict:
    """In a fresh process: one warm-up request on a small photo, then one size=original request."""
    small, data = scene((512, 768)), scene(size_wh)
    result = torch.rand((3, 256, 192)) * 2 - 1
    keypoints = get_detector().detect(Image.open(io.BytesIO(data)).convert("RGB")).keypoints
    request(small, get_detector().detect(Image.open(io.BytesIO(small)).convert("RGB")).keypoints, result, True,
            "original")
    with RssSampler() as whole:
        with RssSampler() as decoding:
            person = person_images(person=data, keypoints=keypoints, keep_photo=True)
            inputs = assemble_inputs(person.masked_model_levels, person.pose_levels, person.output_frame, CLOTH)
        with RssSampler() as compositing:
            body = encode_image(output_image(result, inputs.person_frame, "original"), "jpeg", QUALITY)
    return {"photo_wh": list(size_wh), "rss_before_mb": round(whole.start_rss / 2**20, 1),
            "request_growth_mb": whole.growth_mb, "decode_and_draw_growth_mb": decoding.growth_mb,
            "composite_and_encode_growth_mb": compositing.growth_mb, "answer_bytes": len(body)}


def rss(size_wh: tuple[int, int]) -> dict:
    done = subprocess.run([sys.executable, "-m", "bench.composite", "--rss-child", f"{size_wh[0]}x{size_wh[1]}"],
                          capture_output=True, text=True, cwd=ROOT, timeout=600, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def one_core() -> int:
    core = sorted(os.sched_getaffinity(0))[-1]
    os.sched_setaffinity(0, {core})
    torch.set_num_threads(1)
    return core


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=40, help="requests per path for 1024x1536 (a quarter for 12 MP)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "composite-cpu.json"))
    p.add_argument("--rss-child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rss_child:
        core = one_core()
        print(json.dumps({**rss_child(tuple(map(int, args.rss_child.split("x")))), "core": core}))
        return
    core = one_core()
    report = {
        "what": "CPU per request of framing + composite + encode against the size=model path before framing "
                "(whole photo letterboxed), one core, keypoints given, no inference; RSS of a size=original request",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": {"cpu": cpu_model_name(), "pinned_core": core, "torch_threads": torch.get_num_threads()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "pillow": PIL.__version__,
                     "numpy": np.__version__},
        "jpeg_quality": QUALITY,
        "cpu": [cpu_per_request(size, args.rounds if size[0] * size[1] < 4e6 else max(4, args.rounds // 4))
                for size in SIZES],
        "rss": [rss(size) for size in SIZES],
    }
    print(json.dumps(report, indent=1))
    write_report(report, args.out)


if __name__ == "__main__":
    main()
