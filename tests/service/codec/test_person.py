"""service/codec/person.py: a plain person photo, nothing else, through a real server over real HTTP:
the keypoints are found on the server (model/person/detect.py), said in headers and metrics, and can
be kept; the crop box is said (X-Person-Box), and size=original is the photo itself, dressed."""
from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest
from PIL import Image

from model.person import parse_keypoints, person_images
from model.person.keypoints import L_SHOULDER, NOSE, R_SHOULDER
from service.codec.person import decode_person
from service.codec.sources import RequestParts
from service.settings import Settings
from tests.fixtures.service.harness import fixture_bytes, running_server, sample_key
from tests.utils.photos import PHOTOS, group_photo, jpeg
GRACE = (PHOTOS / "grace_hopper.jpg").read_bytes()
COFFEE = (PHOTOS / "coffee.jpg").read_bytes()
CLOTH = fixture_bytes("cloth_64x64.png")
SIZE = (64, 64)  # the harness's TRYON_IMAGE_SIZE
DETECTIONS = "tryon_person_detection_seconds_count"


@pytest.fixture(scope="module")
def server(tmp_path_factory, standin_weights_file):
    with running_server({"TRYON_WEIGHTS": str(standin_weights_file), "TRYON_MAX_BATCH_SIZE": "2"},
                        tmp_path_factory.mktemp("logs")) as proc:
        yield proc


def files(person: bytes = GRACE, *cloths: bytes) -> list:
    return [("person", ("photo.jpg", person, "image/jpeg"))] + [("cloth", (f"c{i}.png", c, "image/png"))
                                                               for i, c in enumerate(cloths)]


def detections(server) -> float:
    return server.metrics().get(sample_key(DETECTIONS), 0.0)


def png_pixels(body: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))


def test_the_first_photo_is_answered_while_the_detector_warms_after_ready(client, server):
    """The first test of the module: the detector loads after /readyz turned 200 (ready in
    fewer seconds), and a photo that comes first waits for it and is drawn as any other."""
    lines = [json.loads(line) for line in server.stderr.splitlines() if line.startswith("{")]
    (ready,) = [line for line in lines if line["message"] == "ready"]
    assert "detector_warmup_s" not in ready
    answer = client.post("/v1/prepare", files=files(), params={"output": "pose"})
    assert answer.status_code == 200, answer.text
    assert np.array_equal(png_pixels(answer.content), np.asarray(person_images(person=GRACE, size_hw=SIZE).pose))
    for _ in range(100):  # logged by the event loop once the warm-up's thread returns
        warm = [json.loads(line) for line in server.stderr.splitlines() if '"message": "person detector warm"' in line]
        if warm:
            break
        time.sleep(0.05)
    assert warm and warm[0]["detector_warmup_s"] > 0
    assert all(line.startswith("{") for line in server.stderr.splitlines() if line.strip()), \
        "mediapipe's native start-up notes do not break the JSON log"


def test_a_person_photo_alone_is_dressed(client, server):
    before = detections(server)
    answer = client.post("/v1/tryon", files=files(GRACE, CLOTH), params={"format": "png"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-person-count"] == "1" and "x-person-warning" not in answer.headers
    assert answer.headers["x-person-box"] == ",".join(map(str, person_images(person=GRACE, size_hw=SIZE).box))
    timing = dict(item.split(";dur=") for item in answer.headers["server-timing"].split(", "))
    assert {"detect", "decode", "inference"} <= set(timing) and 0 < float(timing["detect"]) <= float(timing["decode"])
    assert png_pixels(answer.content).shape == (*SIZE, 3)
    assert detections(server) == before + 1


def test_the_server_draws_what_the_model_code_draws(client):
    want = person_images(person=GRACE, size_hw=SIZE)
    for output in ("masked_model", "pose"):
        answer = client.post("/v1/prepare", files=files(), params={"output": output})
        assert answer.status_code == 200, answer.text
        assert np.array_equal(png_pixels(answer.content), np.asarray(getattr(want, output)))


def test_keypoints_to_keep_come_back_in_the_photos_pixels_and_draw_the_same(client):
    answer = client.post("/v1/prepare", files=files(), params={"output": "keypoints"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/json" and answer.headers["x-person-count"] == "1"
    document = answer.json()
    assert len(document["people"][0]["pose_keypoints_2d"]) == 54
    kept = parse_keypoints(document, (512, 600))  # in the 512x600 photo's frame, or this raises
    assert kept.xy[R_SHOULDER, 0] < kept.xy[NOSE, 0] < kept.xy[L_SHOULDER, 0]
    assert kept.xy[NOSE, 1] < kept.xy[R_SHOULDER, 1]
    detected = client.post("/v1/prepare", files=files(), params={"output": "masked_model"})
    sent_back = client.post("/v1/prepare", files=files(), data={"keypoints": json.dumps(document)},
                            params={"output": "masked_model"})
    assert sent_back.status_code == 200 and "x-person-count" not in sent_back.headers
    assert np.abs(png_pixels(sent_back.content).astype(int) - png_pixels(detected.content)).mean() < 0.5


def test_the_photo_comes_back_at_its_size_changed_only_under_the_mask(client):
    """size=original: the photo itself (upright), the model's result composited where the masked
    model blacks out; every pixel outside the feathered mask is the photo's own, bit for bit (PNG)."""
    upright = Image.open(io.BytesIO(GRACE)).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned, as a phone does
    turned = jpeg(upright.transpose(Image.Transpose.ROTATE_90), exif=exif.tobytes())
    for sent in (GRACE, turned):
        answer = client.post("/v1/tryon", files=files(sent, CLOTH), params={"format": "png", "size": "original"})
        assert answer.status_code == 200, answer.text
        kept = person_images(person=sent, size_hw=SIZE, keep_photo=True)
        assert answer.headers["x-person-box"] == ",".join(map(str, kept.box))
        got = png_pixels(answer.content)
        photo = np.asarray(kept.composite.photo)
        assert got.shape == (upright.height, upright.width, 3)
        outside = np.asarray(kept.composite.photo_mask()) == 0
        # (At the suite's 64 x 64 the masked model's shapes, drawn in pixels of 256 x 192, cover most of it.)
        assert outside.mean() > 0.05 and np.array_equal(got[outside], photo[outside])
        assert not np.array_equal(got, photo), "the garment went in"


def test_keypoints_cannot_come_from_two_given_images(client):
    pose = fixture_bytes("pose_64x64.png")
    masked = fixture_bytes("masked_model_64x64.png")
    answer = client.post("/v1/prepare", params={"output": "keypoints"},
                         files={"masked_model": ("m.png", masked, "image/png"), "pose": ("p.png", pose, "image/png")})
    assert answer.status_code == 422 and answer.json()["error"]["code"] == "no_keypoints"


def test_a_photo_with_nobody_in_it_is_422_no_person(client, server):
    for path, extra in (("/v1/tryon", (CLOTH,)), ("/v1/prepare", ()), ("/v1/tryon/batch", (CLOTH, CLOTH))):
        answer = client.post(path, files=files(COFFEE, *extra))
        assert answer.status_code == 422, (path, answer.text)
        assert answer.json()["error"] == {"code": "no_person", "message": "no person found in the photo",
                                          "field": "person"}
    assert client.get("/readyz").status_code == 200


def test_several_people_the_most_prominent_is_used_and_the_answer_says_so(client):
    answer = client.post("/v1/tryon", files=files(jpeg(group_photo()), CLOTH))
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-person-count"] == "2"
    assert answer.headers["x-person-warning"] == "2 people in the person photo; the most prominent one was used"


def test_the_batch_route_detects_once_for_all_garments(client, server):
    before = detections(server)
    cloth = Image.open(io.BytesIO(CLOTH))
    mirrored = io.BytesIO()
    cloth.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(mirrored, "PNG")
    answer = client.post("/v1/tryon/batch", files=files(GRACE, CLOTH, mirrored.getvalue()),
                         headers={"Accept": "application/x-ndjson"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-person-count"] == "1" and "detect;dur=" in answer.headers["server-timing"]
    lines = [json.loads(line) for line in answer.text.splitlines()]
    assert [line["index"] for line in lines] == [0, 1] and all(line["status"] == 200 for line in lines)
    assert detections(server) == before + 1


def test_the_silhouette_setting_reaches_the_drawing(monkeypatch):
    """TRYON_PERSON_SILHOUETTE=true: the person photo's mask is drawn as person_images(silhouette=True)."""
    monkeypatch.setenv("TRYON_PERSON_SILHOUETTE", "true")
    on = Settings(image_size="64x64")
    assert on.person_silhouette and Settings.model_fields["person_silhouette"].default is False
    got = decode_person(RequestParts(person={"person": GRACE}), on)
    want = person_images(person=GRACE, size_hw=SIZE, silhouette=True)
    plain = person_images(person=GRACE, size_hw=SIZE)
    assert np.array_equal(np.asarray(got.masked_model), np.asarray(want.masked_model))
    assert not np.array_equal(np.asarray(want.masked_model), np.asarray(plain.masked_model))
