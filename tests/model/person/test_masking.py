"""Masked models (model/person/masking.py) against the DAFlow authors' own drawings.

tests/fixtures/prep holds, for three poses, a person photo, its parsing map,
OpenPose keypoints, and what the authors' scripts drew from them (see its
README.md). Ours must match those within the bounds of tests/utils/prep.py. The
drawing here is pixel-identical to theirs; the bounds leave a little room for a
future Pillow or OpenCV that rounds an edge pixel differently, and no more.
"""
from __future__ import annotations

import numpy as np
import pytest

from model.person.keypoints import L_SHOULDER, NECK, R_SHOULDER, Keypoints, KeypointsError
from model.person.masking import mask_person, mask_person_from_pose
from tests.utils.prep import POSES, assert_matches, keypoints_of, raw_points, reference


@pytest.mark.parametrize("pose", POSES)
def test_masked_model_matches_the_authors(pose):
    person, parse = reference(f"{pose}_person"), reference(f"{pose}_parse")
    assert_matches(mask_person(person, parse, keypoints_of(pose)), f"{pose}_masked_model")


@pytest.mark.parametrize("pose", POSES)
def test_keypoints_only_masked_model_matches_the_authors(pose):
    person = reference(f"{pose}_person")
    assert_matches(mask_person_from_pose(person, keypoints_of(pose)), f"{pose}_masked_model_onlypose")


def test_masking_without_shoulders_is_refused_by_name():
    rows = np.asarray(raw_points("front"), dtype=float).reshape(18, 3)
    rows[[R_SHOULDER, L_SHOULDER]] = 0
    kp = Keypoints(rows[:, :2], rows[:, 2])
    person = reference("front_person")
    for call in (lambda: mask_person_from_pose(person, kp),
                 lambda: mask_person(person, reference("front_parse"), kp)):
        with pytest.raises(KeypointsError, match="right shoulder and left shoulder"):
            call()
    rows[R_SHOULDER] = [68, 76, 0.9]
    with pytest.raises(KeypointsError, match="needs the left shoulder, missing"):
        mask_person_from_pose(person, Keypoints(rows[:, :2], rows[:, 2]))


def test_a_missing_neck_is_the_middle_of_the_shoulders():
    rows = np.asarray(raw_points("front"), dtype=float).reshape(18, 3)
    without = rows.copy()
    without[NECK] = 0
    middle = rows.copy()
    middle[NECK, :2] = (rows[R_SHOULDER, :2] + rows[L_SHOULDER, :2]) / 2
    person = reference("front_person")
    a = mask_person_from_pose(person, Keypoints(without[:, :2], without[:, 2]))
    b = mask_person_from_pose(person, Keypoints(middle[:, :2], middle[:, 2]))
    assert np.array_equal(np.asarray(a), np.asarray(b))
