"""/v1/prepare through a real server over real HTTP: the model inputs drawn from a photo, parse map
and keypoints, each alone or all at once (multipart or JSON), the garment as placed, and the mask.
Expected images come from the model code itself (model.person.person_images)."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from model.images import assemble_inputs, output_image
from model.person.person_inputs import person_images
from tests.utils.front_person import (CLOTH, KEYPOINTS, KEYPOINTS_TEXT, MASKED, PARSE, PERSON, POSE, SIZE, b64,
                                      pixels, png, split_multipart)

# @pytest.mark.isa: the tests whose numbers oneDNN or ATen compute, run again with both held
# to AVX2 (Makefile, test-avx2); the others compute nothing the instruction set can change.


PREPARE_FILES = {"person": ("p.png", PERSON, "image/png"), "parse": ("s.png", PARSE, "image/png"),
                 "keypoints": ("k.json", KEYPOINTS_TEXT.encode(), "application/json")}


@pytest.fixture(scope="module")
def prepared():
    """What the model code draws for the photo, parse map and keypoints."""
    return person_images(person=PERSON, parse=PARSE, keypoints=KEYPOINTS_TEXT, size_hw=SIZE)


@pytest.mark.isa
@pytest.mark.parametrize("output", ["pose", "masked_model"])
def test_prepare_one_image_is_exactly_the_model_input(client, prepared, output):
    answer = client.post("/v1/prepare", params={"output": output}, files=PREPARE_FILES)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "image/png" and answer.headers["x-image-size"] == "64x64"
    assert np.array_equal(pixels(answer.content), pixels(png(getattr(prepared, output))))


def mask_png(person) -> bytes:
    return png(Image.fromarray(person.mask.numpy(), mode="L"))


@pytest.mark.isa
def test_prepare_both_as_multipart_and_as_json(client, prepared):
    want = {name: pixels(png(getattr(prepared, name))) for name in ("masked_model", "pose")}
    want["mask"] = pixels(mask_png(prepared))
    multipart = client.post("/v1/prepare", files=PREPARE_FILES)
    assert multipart.status_code == 200, multipart.text
    assert multipart.headers["content-type"].startswith("multipart/mixed; boundary=")
    assert multipart.headers["x-person-box"] == ",".join(map(str, prepared.box))
    parts = split_multipart(multipart)
    names = [headers["Content-Disposition"].split('name="')[1].rstrip('"') for headers, _ in parts]
    assert names == ["masked_model", "pose", "mask"]
    for (headers, body), name in zip(parts, names):
        assert headers["Content-Type"] == "image/png"
        assert np.array_equal(pixels(body), want[name])

    as_json = client.post("/v1/prepare", headers={"Accept": "application/json"},
                          json={"person": b64(PERSON), "parse": b64(PARSE), "keypoints": KEYPOINTS})
    assert as_json.status_code == 200 and as_json.headers["content-type"] == "application/json"
    document = as_json.json()
    assert document["size"] == [64, 64] and document["media_type"] == "image/png"
    assert document["box"] == list(prepared.box)
    for name in want:
        assert np.array_equal(pixels(base64.b64decode(document[name])), want[name])


@pytest.mark.isa
def test_prepare_shows_the_garment_as_placed_and_the_mask_alone(client, prepared):
    """The three model inputs and the composite mask, each on its own; what has none says so."""
    cloth = client.post("/v1/prepare", params={"output": "cloth"}, files={**PREPARE_FILES,
                                                                          "cloth": ("c.png", CLOTH, "image/png")})
    assert cloth.status_code == 200, cloth.text
    placed = assemble_inputs(prepared.masked_model_levels, prepared.pose_levels, prepared.frame, CLOTH).cloth
    assert np.array_equal(pixels(cloth.content), pixels(png(output_image(placed))))
    mask = client.post("/v1/prepare", params={"output": "mask"}, files=PREPARE_FILES)
    assert mask.status_code == 200 and Image.open(io.BytesIO(mask.content)).mode == "L"
    assert np.array_equal(pixels(mask.content), pixels(mask_png(prepared)))
    no_cloth = client.post("/v1/prepare", params={"output": "cloth"}, files=PREPARE_FILES)
    assert no_cloth.status_code == 422 and no_cloth.json()["error"]["field"] == "cloth"
    no_photo = client.post("/v1/prepare", params={"output": "mask"},
                           files={"masked_model": ("m.png", MASKED, "image/png"), "pose": ("p.png", POSE, "image/png")})
    assert no_photo.status_code == 422 and no_photo.json()["error"]["code"] == "no_mask"
    assert "x-person-box" not in no_photo.headers


def test_prepare_refuses_an_incomplete_mix(client):
    answer = client.post("/v1/prepare", files={"parse": ("s.png", PARSE, "image/png")})
    assert answer.status_code == 422 and answer.json()["error"]["field"] == "person"
