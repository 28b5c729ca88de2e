"""Every mix of person-side inputs that determines the model's inputs works; the rest are named.
``draw_inputs`` at model size is the DAFlow authors' drawing (tests/fixtures/prep, within the bounds
of tests/utils/prep.py), a larger photo is brought to model size first, a wide one letterboxed."""
from __future__ import annotations

import io
from itertools import chain, combinations

import numpy as np
import pytest
from PIL import Image

from model.images import ImageTooLarge
from model.person.keypoints import L_SHOULDER, R_SHOULDER
from model.person.person_inputs import (PERSON_INPUTS, PERSON_MIXES, IncompleteInputs, check_person_mix, draw_inputs,
                                        person_images)
from tests.utils.prep import POSES, PREP, SIZE_WH, assert_matches, difference, keypoints_of, raw_points, reference


def _read(name: str) -> bytes:
    return (PREP / name).read_bytes()


def _same(img: Image.Image, name: str) -> bool:
    return np.array_equal(np.asarray(img.convert("RGB")), np.asarray(Image.open(PREP / name).convert("RGB")))


def test_given_images_are_used_as_they_are():
    got = person_images(masked_model=_read("front_masked_model.png"), pose=_read("front_pose.png"))
    assert _same(got.masked_model, "front_masked_model.png") and _same(got.pose, "front_pose.png")


def test_person_and_keypoints_draw_both():
    got = person_images(person=_read("bent_person.png"), keypoints=_read("bent_keypoints.json"),
                        parse=_read("bent_parse.png"))
    assert _same(got.masked_model, "bent_masked_model.png") and _same(got.pose, "bent_pose.png")


def test_masked_model_given_pose_drawn_from_keypoints():
    got = person_images(masked_model=_read("front_masked_model_onlypose.png"),
                        keypoints=_read("front_keypoints.json"))
    assert _same(got.masked_model, "front_masked_model_onlypose.png") and _same(got.pose, "front_pose.png")


def test_pose_given_masked_model_drawn():
    got = person_images(person=_read("partial_person.png"), keypoints=_read("partial_keypoints.json"),
                        pose=_read("partial_pose.png"))
    assert _same(got.masked_model, "partial_masked_model_onlypose.png") and _same(got.pose, "partial_pose.png")


@pytest.mark.parametrize("kwargs,fields,words", [
    ({"keypoints": "front_keypoints.json"}, ("masked_model", "person"), "missing: masked_model, person"),
    ({"masked_model": "front_masked_model.png"}, ("pose", "keypoints"), "add pose (for masked_model + pose) or "
                                                                        "keypoints (for keypoints + masked_model)"),
    ({"parse": "front_parse.png", "keypoints": "front_keypoints.json"}, ("person",), "missing: person"),
    ({"pose": "front_pose.png"}, ("masked_model", "person"), "missing: masked_model, person"),
    ({"masked_model": "front_masked_model.png", "pose": "front_pose.png", "person": "front_person.png"},
     ("person",), "ambiguous"),
    ({"masked_model": "front_masked_model.png", "pose": "front_pose.png", "keypoints": "front_keypoints.json"},
     ("keypoints",), "ambiguous"),
    ({"masked_model": "front_masked_model.png", "person": "front_person.png", "keypoints": "front_keypoints.json"},
     ("person",), "ambiguous"),
])
def test_incomplete_or_ambiguous_mixes(kwargs, fields, words):
    with pytest.raises(IncompleteInputs) as err:
        person_images(**{k: _read(v) for k, v in kwargs.items()})
    assert err.value.fields == fields and words in err.value.message


def test_the_mix_table_accepts_exactly_its_forms():
    """Every subset of the five inputs: valid exactly when it is one of PERSON_MIXES' forms."""
    names = sorted(PERSON_INPUTS)
    forms = {m.required | frozenset(extra) for m in PERSON_MIXES
             for extra in chain.from_iterable(combinations(sorted(m.optional), k) for k in range(3))}
    for given in chain.from_iterable(combinations(names, k) for k in range(len(names) + 1)):
        if frozenset(given) in forms:
            assert check_person_mix(set(given)).required <= set(given)
        else:
            with pytest.raises(IncompleteInputs) as err:
                check_person_mix(set(given))
            assert err.value.fields and set(err.value.fields) <= set(names)
    assert check_person_mix({"person"}).summary.startswith("the keypoints detected")


def test_parse_map_pixel_limit_is_checked_before_decoding_like_any_image():
    """An oversized parsing map is ImageTooLarge (413 in the service), as the photo would be."""
    big_parse = io.BytesIO()
    Image.open(PREP / "front_parse.png").resize((384, 512), Image.NEAREST).save(big_parse, "PNG")
    with pytest.raises(ImageTooLarge) as err:
        person_images(person=_read("front_person.png"), keypoints=_read("front_keypoints.json"),
                      parse=big_parse.getvalue(), max_pixels=192 * 256)
    assert err.value.field == "parse" and "over the limit of 49152" in err.value.message


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
