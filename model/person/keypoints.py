"""Body keypoints as pose estimators give them -> 18 COCO-18 points.

The published model's inputs were drawn from OpenPose keypoints in the
COCO-18 order (nose, neck, right shoulder, ...). Callers have what their
estimator gives: OpenPose JSON (COCO-18 or BODY-25), a plain list of 18
(x, y, confidence) triples, or the 17 COCO points most detectors give
(no neck). Everything becomes one ``Keypoints``: (18, 2) pixel coordinates
in the person image's frame and (18,) confidences.

A point is missing when its confidence is at or below 0.01 (OpenPose writes
missing points as (0, 0, 0)); missing points are stored as (0, 0, 0), as the
authors' drawing scripts expect, and keep that value through letterboxing.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..images import Letterbox
from ..safe_json import JsonError, load_json

COCO18_NAMES = (
    "nose", "neck", "right shoulder", "right elbow", "right wrist", "left shoulder",
    "left elbow", "left wrist", "right hip", "right knee", "right ankle", "left hip",
    "left knee", "left ankle", "right eye", "left eye", "right ear", "left ear",
)
NOSE, NECK, R_SHOULDER, R_ELBOW, R_WRIST, L_SHOULDER, L_ELBOW, L_WRIST = range(8)
R_HIP, R_KNEE, R_ANKLE, L_HIP, L_KNEE, L_ANKLE, R_EYE, L_EYE, R_EAR, L_EAR = range(8, 18)

# COCO-18 point i is BODY-25 point BODY25_TO_COCO18[i] (BODY-25 puts a mid-hip at 8
# and six foot points at 19-24, which COCO-18 has not).
BODY25_TO_COCO18 = (0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18)
# COCO-18 point i is COCO-17 point COCO17_TO_COCO18[i]; None is the neck, which
# COCO-17 lacks (COCO-17 runs nose, left/right eye, ear, shoulder, elbow, wrist,
# hip, knee, ankle, left before right).
COCO17_TO_COCO18 = (0, None, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3)

MISSING_CONFIDENCE = 0.01  # at or below: the point is missing (the authors' threshold)
FAR_OUTSIDE = 0.5  # a point more than this share of the image size beyond an edge is an error


class KeypointsError(ValueError):
    """Keypoints that cannot be used; the message names the problem."""

    def __init__(self, message: str):
        super().__init__(f"keypoints: {message}")
        self.message = message


@dataclass(frozen=True)
class Keypoints:
    """18 COCO-18 points: ``xy`` (18, 2) pixels, ``confidence`` (18,)."""
    xy: np.ndarray
    confidence: np.ndarray

    @property
    def present(self) -> np.ndarray:
        """(18,) bool: which points were found."""
        return self.confidence > MISSING_CONFIDENCE

    def as_array(self) -> np.ndarray:
        """(18, 3) rows of (x, y, confidence)."""
        return np.concatenate([self.xy, self.confidence[:, None]], axis=1)

    def letterboxed(self, frame: Letterbox) -> "Keypoints":
        """The same points after ``frame`` maps their image into its target;
        missing points stay (0, 0, 0)."""
        xy = np.where(self.present[:, None], frame.apply_points(self.xy), 0.0)
        return Keypoints(xy, self.confidence.copy())


def _number(value: Any, where: str) -> float:
    # bool is an int to Python, but never a coordinate.
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise KeypointsError(f"{where} is not a number: {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise KeypointsError(f"{where} is NaN or infinite")
    return value


def _rows(points: Sequence, what: str) -> np.ndarray:
    """A list of (x, y, confidence) triples or (x, y) pairs -> (N, 3) float64.

    A pair has confidence 1 unless it is (0, 0), the usual mark of a missing point.
    """
    rows = []
    for i, point in enumerate(points):
        if isinstance(point, (str, bytes)) or not isinstance(point, (Sequence, np.ndarray)) \
                or len(point) not in (2, 3):
            raise KeypointsError(f"{what} point {i} must be an (x, y, confidence) triple, got {point!r}")
        values = [_number(v, f"{what} point {i} {axis}") for v, axis in zip(point, ("x", "y", "confidence"))]
        if len(values) == 2:
            values.append(0.0 if values[0] == 0 and values[1] == 0 else 1.0)
        rows.append(values)
    return np.asarray(rows, dtype=np.float64).reshape(-1, 3)


def _flat_rows(flat: Sequence, what: str) -> np.ndarray:
    """[x0, y0, c0, x1, ...] -> (N, 3)."""
    if isinstance(flat, (str, bytes)) or not isinstance(flat, (Sequence, np.ndarray)):
        raise KeypointsError(f"{what} must be a list of numbers, got {type(flat).__name__}")
    if len(flat) % 3:
        raise KeypointsError(f"{what} has {len(flat)} numbers, not a multiple of 3 (x, y, confidence)")
    return _rows([flat[i:i + 3] for i in range(0, len(flat), 3)], what)


def _to_coco18(rows: np.ndarray, what: str) -> np.ndarray:
    """(18 | 25 | 17, 3) in their own order -> (18, 3) in COCO-18 order."""
    if len(rows) == 18:
        return rows
    if len(rows) == 25:
        return rows[list(BODY25_TO_COCO18)]
    if len(rows) == 17:
        out = np.zeros((18, 3))
        for i, j in enumerate(COCO17_TO_COCO18):
            if j is not None:
                out[i] = rows[j]
        right, left = out[R_SHOULDER], out[L_SHOULDER]
        if right[2] > MISSING_CONFIDENCE and left[2] > MISSING_CONFIDENCE:
            out[NECK] = [(right[0] + left[0]) / 2, (right[1] + left[1]) / 2, min(right[2], left[2])]
        return out
    raise KeypointsError(f"{what} has {len(rows)} points; expected 18 (COCO-18), 25 (BODY-25) "
                         "or 17 (COCO-17)")


def _openpose_person(data: dict) -> np.ndarray:
    people = data["people"]
    if not isinstance(people, list):
        raise KeypointsError("'people' must be a list")
    if not people:
        raise KeypointsError("no people in the OpenPose JSON ('people' is empty)")
    candidates = []
    for n, person in enumerate(people):
        key = next((k for k in ("pose_keypoints_2d", "pose_keypoints") if isinstance(person, dict) and k in person),
                   None)
        if key is None:
            raise KeypointsError(f"people[{n}] has no 'pose_keypoints_2d' or 'pose_keypoints'")
        candidates.append(_to_coco18(_flat_rows(person[key], f"people[{n}].{key}"), f"people[{n}].{key}"))
    # Several people: the one found most surely (largest summed confidence) is the subject.
    return max(candidates, key=lambda rows: rows[:, 2].clip(min=0).sum())


def _decode(source: Any) -> Any:
    if isinstance(source, (str, bytes, bytearray, memoryview)):
        try:
            return load_json(source)
        except JsonError as exc:
            raise KeypointsError(exc.message) from None
    return source


def parse_keypoints(source: Any, image_size_wh: tuple[int, int] | None = None) -> Keypoints:
    """Any accepted keypoint format (JSON text or bytes, or the decoded object) -> Keypoints.

    Accepted: OpenPose JSON ``{"people": [{"pose_keypoints_2d" | "pose_keypoints": [...]}]}``
    with 18 or 25 points; ``{"keypoints": [...]}`` (COCO annotations: 17 points,
    flat or as triples); a list of 18, 25 or 17 (x, y, confidence) triples; the
    flat list of 54, 75 or 51 numbers. ``image_size_wh`` of the person image,
    when given, rejects points far outside it.
    """
    data = _decode(source)
    if isinstance(data, np.ndarray):
        data = data.tolist()
    if isinstance(data, dict):
        if "people" in data:
            rows = _openpose_person(data)
        elif "keypoints" in data:
            rows = _from_list(data["keypoints"], "'keypoints'")
        else:
            raise KeypointsError("a JSON object needs 'people' (OpenPose) or 'keypoints' (COCO)")
    elif isinstance(data, list):
        rows = _from_list(data, "the list")
    else:
        raise KeypointsError(f"expected OpenPose JSON or a list of points, got {type(data).__name__}")
    return _finish(rows, image_size_wh)


def _from_list(data: Any, what: str) -> np.ndarray:
    if isinstance(data, np.ndarray):
        data = data.tolist()
    if not isinstance(data, list) or not data:
        raise KeypointsError(f"{what} must be a non-empty list of points")
    if all(isinstance(v, (list, tuple)) for v in data):
        return _to_coco18(_rows(data, what), what)
    return _to_coco18(_flat_rows(data, what), what)


def _finish(rows: np.ndarray, image_size_wh: tuple[int, int] | None) -> Keypoints:
    present = rows[:, 2] > MISSING_CONFIDENCE
    rows = np.where(present[:, None], rows, 0.0)
    keypoints = Keypoints(rows[:, :2].copy(), rows[:, 2].copy())
    if image_size_wh is not None:
        check_in_frame(keypoints, image_size_wh)
    return keypoints


def check_in_frame(keypoints: Keypoints, image_size_wh: tuple[int, int]) -> None:
    """Raises KeypointsError for a found point far outside an image of ``image_size_wh``.

    Far: more than FAR_OUTSIDE (half) of the image's width or height beyond an
    edge. Estimators do put points a little outside (a cut-off elbow), but a
    point that far out means keypoints of another frame or image.
    """
    width, height = image_size_wh
    lo = -FAR_OUTSIDE * np.array([width, height])
    hi = (1 + FAR_OUTSIDE) * np.array([width, height])
    for i in np.flatnonzero(keypoints.present):
        x, y = keypoints.xy[i]
        if not (lo[0] <= x <= hi[0] and lo[1] <= y <= hi[1]):
            raise KeypointsError(
                f"point {i} ({COCO18_NAMES[i]}) at ({x:g}, {y:g}) is far outside the {width}x{height} "
                f"image (more than {FAR_OUTSIDE:.0%} of its size beyond an edge); are the keypoints "
                "in the person image's pixel frame?")


def load_keypoints(path: str | Path, image_size_wh: tuple[int, int] | None = None) -> Keypoints:
    """Keypoints from a JSON file (any format parse_keypoints accepts)."""
    try:
        text = Path(path).read_bytes()
    except OSError as exc:
        raise KeypointsError(f"cannot read {path}: {exc.strerror or exc}") from None
    return parse_keypoints(text, image_size_wh)


def openpose_json(keypoints: Keypoints) -> dict:
    """OpenPose's JSON for one person (COCO-18 ``pose_keypoints_2d``), as parse_keypoints reads it back."""
    # Pixels to 1/100; confidences as they are, so none crosses the missing threshold.
    flat = [v for (x, y), c in zip(keypoints.xy, keypoints.confidence) for v in (round(float(x), 2),
                                                                                round(float(y), 2), float(c))]
    return {"version": 1.3, "people": [{"pose_keypoints_2d": flat}]}


def require(keypoints: Keypoints, indices: Sequence[int], purpose: str) -> None:
    """Raises KeypointsError naming the missing points among ``indices``."""
    missing = [COCO18_NAMES[i] for i in indices if not keypoints.present[i]]
    if missing:
        raise KeypointsError(f"{purpose} needs the {' and '.join(missing)}, missing from the keypoints")
