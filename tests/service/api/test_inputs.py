"""The person-side inputs shops really have (service/api/inputs.py), through a real server over
real HTTP: each mix of photo, keypoints, parse, pose and masked model for /v1/tryon, the mixes and
keypoints refused, and hostile JSON on every route that takes a person. Expected images come from
the model code itself (model.person.person_images and the network)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from model import create_model, load_weights
from model.images import assemble_inputs, output_image
from model.person.person_inputs import person_images
from tests.utils.front_person import (CLOTH, KEYPOINTS, KEYPOINTS_TEXT, MASKED, PARSE, PERSON, POSE, SIZE,
                                      assert_same_image, b64, pixels)

# @pytest.mark.isa: the tests whose numbers oneDNN or ATen compute, run again with both held
# to AVX2 (Makefile, test-avx2); the others compute nothing the instruction set can change.


@pytest.fixture(scope="module")
def network(standin_state):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the server shares the cores
    yield load_weights(create_model(sampler="torch"), standin_state)
    torch.set_num_threads(threads)


def expected_tryon(network, cloth: bytes = CLOTH, **person) -> np.ndarray:
    drawn = person_images(size_hw=SIZE, **person)
    inputs = assemble_inputs(drawn.masked_model, drawn.pose, drawn.frame, cloth)
    with torch.inference_mode():
        pose, masked_model, cloth = inputs.batch()
        out = network(torch.cat((pose, masked_model), dim=1), cloth, masked_model)
    return np.asarray(output_image(out[0]), dtype=np.int16)


# Each mix in the three ways keypoints arrive: a multipart text field, a multipart file, a JSON value.
MIXES = [
    ("person+keypoints, keypoints as a text field", dict(person=PERSON, keypoints=KEYPOINTS_TEXT),
     lambda: dict(files={"person": ("p.png", PERSON, "image/png"), "cloth": ("c.png", CLOTH, "image/png")},
                  data={"keypoints": KEYPOINTS_TEXT})),
    ("person+keypoints+parse, keypoints as a file", dict(person=PERSON, keypoints=KEYPOINTS_TEXT, parse=PARSE),
     lambda: dict(files={"person": ("p.png", PERSON, "image/png"), "parse": ("s.png", PARSE, "image/png"),
                         "keypoints": ("k.json", KEYPOINTS_TEXT.encode(), "application/json"),
                         "cloth": ("c.png", CLOTH, "image/png")})),
    ("masked_model+keypoints, keypoints as a JSON object", dict(masked_model=MASKED, keypoints=KEYPOINTS),
     lambda: dict(json={"masked_model": b64(MASKED), "keypoints": KEYPOINTS, "cloth": b64(CLOTH)})),
    ("person+keypoints+pose, keypoints as a JSON string", dict(person=PERSON, keypoints=KEYPOINTS, pose=POSE),
     lambda: dict(json={"person": b64(PERSON), "pose": b64(POSE), "keypoints": KEYPOINTS_TEXT,
                        "cloth": b64(CLOTH)})),
    ("keypoints as a JSON list of triples", dict(person=PERSON, keypoints=KEYPOINTS),
     lambda: dict(json={"person": b64(PERSON), "cloth": b64(CLOTH),
                        "keypoints": np.reshape(KEYPOINTS["people"][0]["pose_keypoints"], (18, 3)).tolist()})),
]


@pytest.mark.isa
@pytest.mark.parametrize("name, person, request_kwargs", MIXES, ids=[m[0] for m in MIXES])
def test_tryon_input_mixes_equal_model_code(client, network, name, person, request_kwargs):
    answer = client.post("/v1/tryon", params={"format": "png"}, **request_kwargs())
    assert answer.status_code == 200, answer.text
    assert_same_image(pixels(answer.content), expected_tryon(network, **person))


@pytest.mark.parametrize("kwargs, code, fields", [
    (dict(files={"pose": ("p.png", POSE, "image/png"), "cloth": ("c.png", CLOTH, "image/png")}),
     "incomplete_inputs", "masked_model,person"),
    (dict(json={"masked_model": b64(MASKED), "cloth": b64(CLOTH)}), "incomplete_inputs", "pose,keypoints"),
    (dict(json={"masked_model": b64(MASKED), "pose": b64(POSE), "keypoints": KEYPOINTS, "cloth": b64(CLOTH)}),
     "ambiguous_inputs", "keypoints"),
    (dict(files={"masked_model": ("m.png", MASKED, "image/png"), "pose": ("p.png", POSE, "image/png"),
                 "person": ("q.png", PERSON, "image/png"), "cloth": ("c.png", CLOTH, "image/png")}),
     "ambiguous_inputs", "person"),
], ids=["pose alone", "masked model alone", "keypoints besides both images", "person besides both images"])
def test_incomplete_or_ambiguous_mix_is_422_naming_the_fields(client, kwargs, code, fields):
    answer = client.post("/v1/tryon", **kwargs)
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["code"] == code and error["field"] == fields
    assert all(f in error["message"] for f in fields.split(","))


def _points(rows) -> dict:
    return {"people": [{"pose_keypoints_2d": [v for row in rows for v in row]}]}


TRIPLES = np.reshape(KEYPOINTS["people"][0]["pose_keypoints"], (18, 3)).tolist()
BAD_KEYPOINTS = [
    ("wrong length", json.dumps(_points(TRIPLES[:10])), "has 10 points"),
    ("not numbers", json.dumps([["a", "b", 1]] + TRIPLES[1:]), "is not a number"),
    ("NaN", json.dumps([[float("nan"), 10.0, 0.9]] + TRIPLES[1:]), "NaN"),
    ("far outside", json.dumps([[5000.0, 40.0, 0.9]] + TRIPLES[1:]), "far outside"),
    ("not JSON", "{people: ", "not valid JSON"),
]


@pytest.mark.parametrize("name, text, problem", BAD_KEYPOINTS, ids=[b[0] for b in BAD_KEYPOINTS])
def test_bad_keypoints_are_422_naming_the_problem(client, name, text, problem):
    answer = client.post("/v1/tryon", data={"keypoints": text},
                         files={"person": ("p.png", PERSON, "image/png"), "cloth": ("c.png", CLOTH, "image/png")})
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["code"] == "invalid_keypoints" and error["field"] == "keypoints"
    assert problem in error["message"]
    # The server is none the worse: the next good request is served.
    good = client.post("/v1/prepare", params={"output": "pose"}, data={"keypoints": KEYPOINTS_TEXT},
                       files={"person": ("p.png", PERSON, "image/png")})
    assert good.status_code == 200 and good.headers["content-type"] == "image/png"


DEEP = "[" * 100_000
# (name, request kwargs without the route's own images, status, code, field)
HOSTILE_JSON = [
    ("nested body", dict(content=DEEP.encode(), headers={"Content-Type": "application/json"}), 422, "json_too_deep",
     None),
    ("nested keypoints file", dict(files={"keypoints": ("k.json", DEEP.encode(), "application/json")}), 422,
     "json_too_deep", "keypoints"),
    ("nested keypoints in a JSON string", dict(json={"keypoints": DEEP}), 422, "json_too_deep", "keypoints"),
    ("NaN literal in keypoints", dict(data={"keypoints": json.dumps(TRIPLES).replace("[", "[NaN, ", 1)}), 422,
     "invalid_keypoints", "keypoints"),
    ("5,000-digit integer in keypoints", dict(data={"keypoints": "[" + "9" * 5000 + "]"}), 422, "invalid_keypoints",
     "keypoints"),
    ("key twice in keypoints", dict(data={"keypoints": '{"people": [], "people": []}'}), 422, "duplicate_field",
     "keypoints"),
    ("keypoints part twice", dict(files=[("keypoints", ("a.json", KEYPOINTS_TEXT.encode(), "application/json")),
                                         ("keypoints", ("b.json", KEYPOINTS_TEXT.encode(), "application/json"))]),
     422, "duplicate_field", "keypoints"),
    ("a million values in a keypoints file", dict(files={"keypoints": ("k.json", b"[" + b"0," * 600_000 + b"0]",
                                                                       "application/json")}),
     413, "json_too_large", "keypoints"),
]


def _with_person(route: str, kwargs: dict) -> dict:
    """The hostile part plus the person photo (and a garment where the route takes one)."""
    own = [("person", ("p.png", PERSON, "image/png"))] + ([] if route == "/v1/prepare" else
                                                          [("cloth", ("c.png", CLOTH, "image/png"))])
    if "json" in kwargs:
        fields = {name: b64(data) for name, (_, data, _) in own}
        if route == "/v1/tryon/batch":
            fields["cloths"] = [fields.pop("cloth")]
        return {"json": fields | kwargs["json"]}
    if "content" in kwargs:
        return kwargs
    files = kwargs.get("files", {})
    return {"files": own + (list(files.items()) if isinstance(files, dict) else files),
            "data": kwargs.get("data", {})}


@pytest.mark.parametrize("route", ["/v1/tryon", "/v1/prepare", "/v1/tryon/batch"])
@pytest.mark.parametrize("name, kwargs, status, code, field", HOSTILE_JSON, ids=[h[0] for h in HOSTILE_JSON])
def test_hostile_json_is_a_4xx_naming_the_field_on_every_route(client, route, name, kwargs, status, code, field):
    answer = client.post(route, **_with_person(route, kwargs))
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert (error["code"], error["field"]) == (code, field)
    assert error["message"]
