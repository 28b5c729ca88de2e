"""Every mix of person-side inputs that determines the model's inputs works; the rest are named."""
from __future__ import annotations

import io
from itertools import chain, combinations

import numpy as np
import pytest
from PIL import Image

from model.images import ImageTooLarge
from model.person.person_inputs import PERSON_INPUTS, PERSON_MIXES, IncompleteInputs, check_person_mix, person_images
from tests.utils import FIXTURES

PREP = FIXTURES / "prep"


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
