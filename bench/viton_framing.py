"""Where VITON puts the person and the garment in its 192 x 256 frames: the numbers framing is built on
(model/person/framing.py, model/images/garment.py; docs/framing.md). Not a timed benchmark: a
measurement of the training data, run once, its raw JSON committed.

VITON (Han et al., CVPR 2018) as CP-VTON published it preprocessed, the layout DAFlow trains on:
``{train,test}/pose/NAME_0_keypoints.json`` (OpenPose COCO-18, in the 192 x 256 frame),
``image/NAME_0.jpg`` with ``image-parse/NAME_0.png`` (LIP labels), ``cloth/NAME_1.jpg`` with
``cloth-mask/NAME_1.jpg``. The files are not in this repository; give the folder that holds
``train/`` and ``test/``:

    python -m bench.viton_framing --data /path/to/viton/data --out bench/results/viton-framing.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
from pathlib import Path

import numpy as np
from PIL import Image

from bench.common import write_report

FRAME_WH = (192, 256)
NECK, R_SHOULDER, L_SHOULDER, R_HIP, L_HIP = 1, 2, 5, 8, 11
MISSING = 0.01  # OpenPose's confidence at or below which a point is missing (the authors' threshold)
PERCENTILES = (5, 25, 50, 75, 95)


def spread(values: np.ndarray) -> dict:
    values = np.asarray(values, dtype=np.float64)
    return {"median": round(float(np.median(values)), 2), "mean": round(float(values.mean()), 2),
            **{f"p{p}": round(float(np.percentile(values, p)), 2) for p in PERCENTILES if p != 50}}


def keypoint_rows(folder: Path) -> np.ndarray:
    """(N, 18, 3) of every file's first person."""
    rows = []
    for path in sorted(folder.glob("*_keypoints.json")):
        people = json.loads(path.read_text())["people"]
        if people:
            key = "pose_keypoints_2d" if "pose_keypoints_2d" in people[0] else "pose_keypoints"
            rows.append(np.asarray(people[0][key], dtype=np.float64).reshape(-1, 3)[:18])
    return np.stack(rows)


def person_framing(rows: np.ndarray) -> dict:
    """The shoulders' middle, the shoulders' width and the torso (shoulders' middle to hips' middle),
    in pixels of the 192 x 256 frame, over the frames where both shoulders and both hips are found."""
    present = rows[:, :, 2] > MISSING
    whole = present[:, [R_SHOULDER, L_SHOULDER, R_HIP, L_HIP]].all(axis=1)
    k = rows[whole, :, :2]
    shoulders = (k[:, R_SHOULDER] + k[:, L_SHOULDER]) / 2
    hips = (k[:, R_HIP] + k[:, L_HIP]) / 2
    width = np.linalg.norm(k[:, L_SHOULDER] - k[:, R_SHOULDER], axis=1)
    torso = np.linalg.norm(hips - shoulders, axis=1)
    # How well each alone predicts the frame's height (256 for every frame): the spread of the estimate.
    by_torso = torso / np.median(torso)
    by_width = width / np.median(width)
    return {
        "files": int(len(rows)), "with_shoulders_and_hips": int(whole.sum()),
        "with_shoulders": int(present[:, [R_SHOULDER, L_SHOULDER]].all(axis=1).sum()),
        "shoulders_x": spread(shoulders[:, 0]), "shoulders_y": spread(shoulders[:, 1]),
        "neck_y": spread(k[present[whole, NECK], NECK, 1]),
        "hips_y": spread(hips[:, 1]), "shoulder_width": spread(width), "torso": spread(torso),
        "scale_from_torso": spread(by_torso), "scale_from_shoulder_width": spread(by_width),
    }


def background(images: Path, parses: Path, sample: int, seed: int) -> dict:
    """The colour around the person: each frame's median over its background label (0), then the
    median over frames."""
    paths = sorted(images.glob("*.jpg"))
    chosen = np.random.default_rng(seed).choice(len(paths), size=min(sample, len(paths)), replace=False)
    medians = []
    for i in sorted(chosen):
        pixels = np.asarray(Image.open(paths[i]).convert("RGB"))
        labels = np.asarray(Image.open(parses / (paths[i].stem + ".png")))
        found = pixels[labels == 0]
        if len(found) >= 500:
            medians.append(np.median(found, axis=0))
    medians = np.asarray(medians)
    return {"frames": int(len(medians)), "median_rgb": [int(v) for v in np.median(medians, axis=0)],
            "p10_rgb": [int(v) for v in np.percentile(medians, 10, axis=0)],
            "p90_rgb": [int(v) for v in np.percentile(medians, 90, axis=0)]}


def garment_framing(masks: Path, cloths: Path) -> dict:
    """The garment's extent in its frame (from the cloth masks) and the colour around it."""
    boxes, around = [], []
    for path in sorted(masks.glob("*.jpg")):
        mask = np.asarray(Image.open(path).convert("L")) > 127
        ys, xs = np.nonzero(mask)
        if not len(xs):
            continue
        boxes.append((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
        if len(around) < 2000 and (~mask).sum() >= 500:
            around.append(np.median(np.asarray(Image.open(cloths / path.name).convert("RGB"))[~mask], axis=0))
    b = np.asarray(boxes, dtype=np.float64)
    width, height = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    return {"files": int(len(b)), "left": spread(b[:, 0]), "top": spread(b[:, 1]), "right": spread(b[:, 2]),
            "bottom": spread(b[:, 3]), "width": spread(width), "height": spread(height),
            "centre_x": spread((b[:, 0] + b[:, 2]) / 2), "centre_y": spread((b[:, 1] + b[:, 3]) / 2),
            "background_median_rgb": [int(v) for v in np.median(np.asarray(around), axis=0)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="the folder holding train/ and test/")
    parser.add_argument("--source", default="", help="where the files came from, for the report")
    parser.add_argument("--background-sample", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=Path("bench/results/viton-framing.json"))
    args = parser.parse_args()
    report = {"what": "where VITON places the person and the garment in its 192x256 frames (pixels of that frame)",
              "source": args.source, "frame_wh": list(FRAME_WH),
              "date": datetime.date.today().isoformat(), "python": platform.python_version(), "person": {}}
    for split in ("train", "test"):
        report["person"][split] = person_framing(keypoint_rows(args.data / split / "pose"))
    report["person_background"] = background(args.data / "train" / "image", args.data / "train" / "image-parse",
                                             args.background_sample, seed=0)
    report["garment"] = garment_framing(args.data / "train" / "cloth-mask", args.data / "train" / "cloth")
    print(json.dumps(report, indent=1))
    write_report(report, args.out)


if __name__ == "__main__":
    main()
