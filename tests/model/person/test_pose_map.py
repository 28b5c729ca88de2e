"""Pose maps (model/person/pose_map.py) against the DAFlow authors' own drawings.

tests/fixtures/prep holds, for three poses, a person photo, its parsing map,
OpenPose keypoints, and what the authors' scripts drew from them (see its
README.md). Ours must match those within the bounds of tests/utils/prep.py. The
drawing here is pixel-identical to theirs; the bounds leave a little room for a
future Pillow or OpenCV that rounds an edge pixel differently, and no more.
"""
from __future__ import annotations

import numpy as np
import pytest

from model.person.keypoints import COCO18_NAMES, Keypoints
from model.person.pose_map import draw_pose_map
from tests.utils.prep import (MAX_MEAN_ABS_DIFF, MAX_SHARE_DIFFERING, POSES, SIZE_WH, assert_matches, difference,
                              keypoints_of, reference)


@pytest.mark.parametrize("pose", POSES)
def test_pose_map_matches_the_authors(pose):
    assert_matches(draw_pose_map(keypoints_of(pose), SIZE_WH), f"{pose}_pose")


def test_bounds_catch_a_shifted_drawing():
    # The bounds must be tight enough to notice a limb drawn one pixel off.
    shifted = keypoints_of("front")
    moved = Keypoints(shifted.xy + np.where(np.arange(18)[:, None] == 4, [1.0, 0.0], 0.0), shifted.confidence)
    mean, share = difference(draw_pose_map(moved, SIZE_WH), reference("front_pose"))
    assert mean > MAX_MEAN_ABS_DIFF and share > MAX_SHARE_DIFFERING


def test_partial_pose_skips_missing_points():
    kp = keypoints_of("partial")
    missing = {COCO18_NAMES[i] for i in np.flatnonzero(~kp.present)}
    assert missing == {"right wrist", "right ankle", "left ankle", "right ear"}
    pose = np.asarray(draw_pose_map(kp, SIZE_WH))
    # Nothing drawn at the image corner, where a (0, 0) point would land.
    assert not pose[:8, :8].any()
