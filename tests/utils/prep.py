"""The DAFlow authors' own drawings (tests/fixtures/prep) and how ours are compared with them."""
from __future__ import annotations

import json

import numpy as np
from PIL import Image

from model.person.keypoints import Keypoints, load_keypoints

from . import FIXTURES

PREP = FIXTURES / "prep"
POSES = ("front", "bent", "partial")
SIZE_WH = (192, 256)  # of every fixture

# Bounds per reference image: mean absolute difference over all pixels and
# channels, and the share of pixels where some channel differs by more than 8.
MAX_MEAN_ABS_DIFF = 0.02
MAX_SHARE_DIFFERING = 0.0005  # 25 of 49152 pixels
DIFFERING = 8


def reference(name: str) -> Image.Image:
    return Image.open(PREP / f"{name}.png")


def keypoints_of(pose: str) -> Keypoints:
    return load_keypoints(PREP / f"{pose}_keypoints.json", SIZE_WH)


def raw_points(pose: str) -> list[float]:
    return json.loads((PREP / f"{pose}_keypoints.json").read_text())["people"][0]["pose_keypoints"]


def difference(img: Image.Image, ref: Image.Image) -> tuple[float, float]:
    """(mean absolute difference, share of pixels differing by more than DIFFERING)."""
    assert img.size == ref.size and img.mode == ref.mode == "RGB"
    d = np.abs(np.asarray(img, dtype=np.int16) - np.asarray(ref, dtype=np.int16))
    return float(d.mean()), float((d.max(axis=2) > DIFFERING).mean())


def assert_matches(img: Image.Image, name: str) -> None:
    mean, share = difference(img, reference(name))
    assert mean <= MAX_MEAN_ABS_DIFF and share <= MAX_SHARE_DIFFERING, \
        f"{name}: mean abs diff {mean:.4f}, {share:.4%} of pixels differ by more than {DIFFERING}"
