"""Pose maps and masked models against the DAFlow authors' own drawings.

tests/fixtures/prep holds, for three poses, a person photo, its parsing map,
OpenPose keypoints, and what the authors' scripts drew from them (see its
README.md). Ours must match those within the bounds below. The drawing here is
pixel-identical to theirs; the bounds leave a little room for a future Pillow
or OpenCV that rounds an edge pixel differently, and no more.
"""
from __future__ import annotations


import numpy as np
import pytest
from PIL import Image

from model.person.keypoints import COCO18_NAMES, L_SHOULDER, NECK, R_SHOULDER, Keypoints, KeypointsError
from model.person.masking import mask_person, mask_person_from_pose
from model.person.person_inputs import draw_inputs
from model.person.pose_map import draw_pose_map
from tests.utils.prep import (MAX_MEAN_ABS_DIFF, MAX_SHARE_DIFFERING, POSES, PREP, SIZE_WH, assert_matches, difference,
                              keypoints_of, raw_points, reference)

@pytest.mark.parametrize("pose", POSES)
def test_pose_map_matches_the_authors(pose):
    assert_matches(draw_pose_map(keypoints_of(pose), SIZE_WH), f"{pose}_pose")


@pytest.mark.parametrize("pose", POSES)
def test_masked_model_matches_the_authors(pose):
    person, parse = reference(f"{pose}_person"), reference(f"{pose}_parse")
    assert_matches(mask_person(person, parse, keypoints_of(pose)), f"{pose}_masked_model")


@pytest.mark.parametrize("pose", POSES)
def test_keypoints_only_masked_model_matches_the_authors(pose):
    person = reference(f"{pose}_person")
    assert_matches(mask_person_from_pose(person, keypoints_of(pose)), f"{pose}_masked_model_onlypose")


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


@pytest.mark.parametrize("pose", POSES)
def test_draw_inputs_at_model_size_is_the_authors_drawing(pose):
    inputs = draw_inputs((PREP / f"{pose}_person.png").read_bytes(), raw_points(pose),
                         (PREP / f"{pose}_parse.png").read_bytes())
    assert inputs.frame.source_size_wh == inputs.frame.target_size_wh == SIZE_WH
    assert_matches(inputs.pose, f"{pose}_pose")
    assert_matches(inputs.masked_model, f"{pose}_masked_model")
    no_parse = draw_inputs(reference(f"{pose}_person"), keypoints_of(pose))
    assert_matches(no_parse.masked_model, f"{pose}_masked_model_onlypose")


def test_draw_inputs_draws_a_larger_photo_at_model_size():
    # A 2x photo (keypoints in its pixels) brought to model size (here the whole photo, letterboxed,
    # to compare with the authors' drawing) before drawing, so the shapes keep the pixel sizes the
    # model was trained on.
    person = reference("bent_person").resize((384, 512), Image.NEAREST)
    parse = reference("bent_parse").resize((384, 512), Image.NEAREST)
    points = [v * 2 if k % 3 != 2 else v for k, v in enumerate(raw_points("bent"))]
    inputs = draw_inputs(person, [points[i:i + 3] for i in range(0, 54, 3)], parse, framing=False)
    assert inputs.pose.size == inputs.masked_model.size == SIZE_WH
    assert_matches(inputs.pose, "bent_pose")
    # The photo itself went through a bicubic down-scale: small differences in its
    # noisy texture only (measured: mean 1.17, 1.8% of pixels).
    mean, share = difference(inputs.masked_model, reference("bent_masked_model"))
    assert mean < 1.5 and share < 0.025
    assert inputs.frame.restore(inputs.pose).size == (384, 512)


def test_draw_inputs_letterboxes_a_wide_photo_without_framing():
    # A square photo, not framed: the model-size drawing has white (masked) and black (pose)
    # bands above and below the photo, as prepare_inputs pads them.
    person = Image.new("RGB", (300, 300), (200, 180, 160))
    kp = [[150, 60 + 10 * i, 0.9] for i in range(18)]
    kp[R_SHOULDER], kp[L_SHOULDER] = [110, 90, 0.9], [190, 90, 0.9]
    inputs = draw_inputs(person, kp, framing=False)
    top = inputs.frame.content_box[1]
    assert top == 32
    assert (np.asarray(inputs.masked_model)[:top - 1] == 255).all()
    assert not np.asarray(inputs.pose)[:top - 4].any()
    neck = inputs.frame.apply_points([[150, 70]])[0]
    assert np.asarray(inputs.masked_model)[int(neck[1]), int(neck[0])].tolist() == [0, 0, 0]


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
