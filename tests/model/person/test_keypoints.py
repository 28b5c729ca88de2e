"""Keypoint formats in, COCO-18 out; bad keypoints refused with a message naming the problem."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from model.images import Letterbox
from model.person.keypoints import (BODY25_TO_COCO18, COCO17_TO_COCO18, L_SHOULDER, NECK, R_SHOULDER, R_WRIST,
                             KeypointsError, parse_keypoints)
from model.person.pose_map import draw_pose_map
from tests.utils.prep import SIZE_WH, assert_matches, raw_points

FRONT = np.asarray(raw_points("front"), dtype=float).reshape(18, 3)


def pose_pixels(kp) -> np.ndarray:
    return np.asarray(draw_pose_map(kp, SIZE_WH))


def as_body25(coco18: np.ndarray) -> np.ndarray:
    body25 = np.zeros((25, 3))
    body25[list(BODY25_TO_COCO18)] = coco18
    body25[8] = [(coco18[8, 0] + coco18[11, 0]) / 2, coco18[8, 1], 0.8]  # mid-hip, which COCO-18 lacks
    body25[19:] = [[70, 250, 0.7]] * 6  # feet, which COCO-18 lacks
    return body25


def as_coco17(coco18: np.ndarray) -> np.ndarray:
    coco17 = np.zeros((17, 3))
    for i, j in enumerate(COCO17_TO_COCO18):
        if j is not None:
            coco17[j] = coco18[i]
    return coco17


@pytest.mark.parametrize("key", ["pose_keypoints", "pose_keypoints_2d"])
def test_openpose_coco18_json(key):
    text = json.dumps({"version": 1.3, "people": [{key: FRONT.ravel().tolist()}]})
    kp = parse_keypoints(text, SIZE_WH)
    assert np.array_equal(kp.as_array(), FRONT)
    assert_matches(draw_pose_map(kp, SIZE_WH), "front_pose")


def test_openpose_body25_maps_to_coco18_order():
    data = {"people": [{"pose_keypoints_2d": as_body25(FRONT).ravel().tolist()}]}
    kp = parse_keypoints(json.dumps(data).encode(), SIZE_WH)
    assert np.array_equal(kp.as_array(), FRONT)
    assert_matches(draw_pose_map(kp, SIZE_WH), "front_pose")


def test_plain_list_of_triples():
    kp = parse_keypoints(FRONT.tolist(), SIZE_WH)
    assert_matches(draw_pose_map(kp, SIZE_WH), "front_pose")


def test_coco17_gets_a_neck_between_the_shoulders():
    kp = parse_keypoints(as_coco17(FRONT).tolist(), SIZE_WH)
    expected = FRONT.copy()
    expected[NECK] = [96.0, 74.0, 0.9]  # shoulders at (66, 74) and (126, 74)
    assert np.array_equal(kp.as_array(), expected)
    # Same points as the 18-point list, same map.
    assert np.array_equal(pose_pixels(kp), pose_pixels(parse_keypoints(expected.tolist(), SIZE_WH)))
    # COCO annotations: a flat list with visibility flags (0 = not labelled).
    flat = as_coco17(FRONT)
    flat[:, 2] = 2
    flat[R_WRIST + 6] = [0, 0, 0]  # COCO-17 index 10 is the right wrist
    kp = parse_keypoints({"keypoints": flat.ravel().tolist()}, SIZE_WH)
    assert not kp.present[R_WRIST] and kp.present.sum() == 17


def test_coco17_without_a_shoulder_has_no_neck():
    coco17 = as_coco17(FRONT)
    coco17[6] = 0  # right shoulder
    kp = parse_keypoints(coco17.tolist(), SIZE_WH)
    assert not kp.present[NECK] and not kp.present[R_SHOULDER] and kp.present[L_SHOULDER]


def test_missing_points_are_zero_however_marked():
    rows = FRONT.copy()
    rows[R_WRIST] = [70, 118, 0.01]  # at the threshold: missing, although it has a place
    kp = parse_keypoints(rows.tolist(), SIZE_WH)
    assert not kp.present[R_WRIST] and kp.as_array()[R_WRIST].tolist() == [0, 0, 0]
    # Missing points are neither drawn nor checked for lying outside the image.
    rows[R_WRIST] = [5000, 5000, 0]
    assert not parse_keypoints(rows.tolist(), SIZE_WH).present[R_WRIST]


def test_the_most_confident_person_is_chosen():
    faint = FRONT.copy()
    faint[:, 2] = 0.2
    data = {"people": [{"pose_keypoints_2d": faint.ravel().tolist()},
                       {"pose_keypoints_2d": (FRONT + [5, 0, 0]).ravel().tolist()}]}
    assert parse_keypoints(data).xy[0, 0] == FRONT[0, 0] + 5


def test_letterboxed_points_follow_the_image_and_missing_ones_stay_zero():
    rows = FRONT.copy()
    rows[R_WRIST] = 0
    kp = parse_keypoints(rows.tolist(), (400, 400))
    frame = Letterbox((400, 400), SIZE_WH)  # scale 0.48, photo 192x192 at top 32
    boxed = kp.letterboxed(frame)
    assert np.allclose(boxed.xy[NECK], [96 * 0.48, 70 * 0.48 + 32])
    assert boxed.xy[R_WRIST].tolist() == [0, 0] and not boxed.present[R_WRIST]


BAD = {
    "wrong length": ({"people": [{"pose_keypoints": [1.0] * 57}]}, "has 19 points; expected 18"),
    "not triples": ({"people": [{"pose_keypoints": [1.0] * 53}]}, "53 numbers, not a multiple of 3"),
    "list length": ([[10, 10, 1]] * 20, r"has 20 points; expected 18 \(COCO-18\), 25 \(BODY-25\) or 17"),
    "string": ([[10, 10, 1]] * 17 + [["10", 10, 1]], r"point 17 x is not a number: '10'"),
    "null": ([[10, 10, 1]] * 3 + [[10, None, 1]] + [[10, 10, 1]] * 14, "point 3 y is not a number: None"),
    "bool": ([[10, 10, True]] * 18, "point 0 confidence is not a number: True"),
    "nan": ('{"people": [{"pose_keypoints": [' + ", ".join(["NaN"] + ["1"] * 53) + "]}]}",
            "NaN is not a JSON number"),  # refused by the JSON parser (model.safe_json), before any point
    "inf": ([[10, 10, 1]] * 5 + [[math.inf, 10, 1]] + [[10, 10, 1]] * 12, "point 5 x is NaN or infinite"),
    "far outside": ([[10, 10, 1]] * 4 + [[10, 400, 1]] + [[10, 10, 1]] * 13,
                    r"point 4 \(right wrist\) at \(10, 400\) is far outside the 192x256 image"),
    "no people": ({"people": []}, "no people"),
    "no keypoints": ({"people": [{"face_keypoints_2d": []}]}, "no 'pose_keypoints_2d' or 'pose_keypoints'"),
    "not json": ("{people: ", "not valid JSON"),
    "not a point": ([[1, 2, 3, 4]] * 18, "point 0 must be an .x, y, confidence. triple"),
    "wrong object": ({"persons": []}, "needs 'people' .OpenPose. or 'keypoints' .COCO."),
    "a number": (42, "expected OpenPose JSON or a list of points, got int"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_keypoints_are_refused_by_name(case):
    source, message = BAD[case]
    with pytest.raises(KeypointsError, match=message) as info:
        parse_keypoints(source, SIZE_WH)
    assert str(info.value).startswith("keypoints: ") and isinstance(info.value, ValueError)


def test_far_means_more_than_half_the_size_beyond_an_edge():
    rows = FRONT.copy()
    rows[R_WRIST] = [-96, 384, 0.9]  # exactly half the width left, half the height below: allowed
    assert parse_keypoints(rows.tolist(), SIZE_WH).present[R_WRIST]
    rows[R_WRIST] = [-96.5, 100, 0.9]
    with pytest.raises(KeypointsError, match="right wrist"):
        parse_keypoints(rows.tolist(), SIZE_WH)
