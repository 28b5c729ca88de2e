"""model/person/detect.py on real photographs (tests/fixtures/photos/README.md): keypoints where a
person would put them, the person photo's own frame, and a clear refusal for what cannot be used."""
from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from model.person import DetectionError, get_detector, person_images
from model.person.detect import BLAZEPOSE_TO_COCO18, VISIBLE, coco18_from_blazepose
from model.person.framing import MIN_TORSO_PX
from model.person.keypoints import (L_EAR, L_ELBOW, L_EYE, L_SHOULDER, NECK, NOSE, R_EAR, R_ELBOW, R_EYE,
                                    R_SHOULDER)
from tests.utils.photos import group_photo, jpeg, photo



@pytest.mark.parametrize("name", ["grace_hopper", "astronaut"])
def test_keypoints_land_where_a_person_would_put_them(name):
    img = photo(name)
    found = get_detector().detect(img)
    k, width, height = found.keypoints, *img.size
    assert found.person_count == 1
    assert k.present[[NOSE, NECK, R_SHOULDER, L_SHOULDER, R_EYE, L_EYE]].all()
    x, y = k.xy[:, 0], k.xy[:, 1]
    # A frontal portrait: the person's right side on the image's left, head above shoulders.
    assert x[R_SHOULDER] < x[NOSE] < x[L_SHOULDER]
    assert x[R_EYE] < x[NOSE] < x[L_EYE] and y[R_EYE] < y[NOSE] and y[L_EYE] < y[NOSE]
    assert y[NOSE] + 0.1 * height < y[NECK]
    assert x[L_SHOULDER] - x[R_SHOULDER] > 0.25 * width
    assert np.allclose(k.xy[NECK], (k.xy[R_SHOULDER] + k.xy[L_SHOULDER]) / 2)
    for ear, eye in ((R_EAR, R_EYE), (L_EAR, L_EYE)):
        if k.present[ear]:
            assert abs(y[ear] - y[eye]) < 0.15 * height
    for elbow, shoulder in ((R_ELBOW, R_SHOULDER), (L_ELBOW, L_SHOULDER)):
        if k.present[elbow]:
            assert y[elbow] > y[shoulder]
    present = k.xy[k.present]
    assert (present >= 0).all() and (present[:, 0] <= width).all() and (present[:, 1] <= height).all()
    assert (k.confidence[k.present] >= VISIBLE).all() and (k.xy[~k.present] == 0).all()


def test_a_photo_with_nobody_in_it_is_no_person():
    with pytest.raises(DetectionError) as err:
        person_images(person=jpeg(photo("coffee")))
    assert err.value.code == "no_person" and err.value.field == "person"


def test_detection_runs_on_the_upright_photo_and_points_are_in_its_frame():
    """A camera's EXIF orientation is applied first; the points come out in the upright photo's pixels."""
    upright = photo("grace_hopper")
    # Stored rotated, with orientation 6 ("rotate 90 clockwise to view"), as a phone writes it.
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    got = person_images(person=jpeg(stored, exif=exif.tobytes()))
    want = person_images(person=jpeg(upright))
    assert got.frame.source_size_wh == upright.size
    shared = got.keypoints.present & want.keypoints.present
    assert shared[[NOSE, R_SHOULDER, L_SHOULDER]].all()
    assert np.abs(got.keypoints.xy[shared] - want.keypoints.xy[shared]).max() < 0.03 * max(upright.size)


def test_pose_map_points_go_through_the_photos_frame():
    img = photo("astronaut")  # cut off at the chest: the box reaches past the photo's bottom
    got = person_images(person=jpeg(img))
    nose = got.frame.apply_points(got.keypoints.xy[[NOSE]])[0]
    colour = np.asarray(got.pose)[int(nose[1]), int(nose[0])]
    assert colour.max() > 100, "the nose's dot is drawn at the framed nose"
    bottom = got.frame.content_box[3]
    assert bottom < 256 and np.asarray(got.pose)[bottom + 4:].max() == 0, "nothing in the band below the photo"


@pytest.mark.parametrize("mirrored", [False, True], ids=["larger on the left", "larger on the right"])
def test_several_people_the_most_prominent_is_used_and_counted(mirrored):
    found = get_detector().detect(group_photo(mirrored))
    assert found.person_count == 2
    nose_x = found.keypoints.xy[NOSE, 0]
    assert (nose_x > 800 - 512) if mirrored else (nose_x < 512), "Grace Hopper's keypoints, the larger person"


def test_a_person_too_small_to_draw_is_refused_with_the_size_found():
    canvas = Image.new("RGB", (600, 700), (255, 255, 255))
    canvas.paste(photo("grace_hopper").resize((100, 117)), (250, 300))
    with pytest.raises(DetectionError) as err:
        person_images(person=jpeg(canvas))
    assert err.value.code == "person_too_small"
    assert "px in the 600x700 photo" in err.value.message
    assert f"at least {MIN_TORSO_PX} are needed" in err.value.message


def test_missing_shoulders_are_named():
    head = photo("grace_hopper").crop((100, 60, 420, 330))  # the face, no shoulders
    with pytest.raises(DetectionError) as err:
        person_images(person=jpeg(head))
    assert err.value.code == "missing_body_points"
    assert "the person's right shoulder and left shoulder are not visible" in err.value.message


def test_blazepose_landmarks_map_to_coco18():
    landmarks = np.zeros((33, 3))
    for coco, blaze in enumerate(BLAZEPOSE_TO_COCO18):
        if blaze is not None:
            landmarks[blaze] = (0.01 * (coco + 1), 0.02 * (coco + 1), 0.9)
    landmarks[BLAZEPOSE_TO_COCO18[R_ELBOW], 2] = VISIBLE - 0.01  # not sure it sees it: absent
    landmarks[BLAZEPOSE_TO_COCO18[L_ELBOW], 0] = 1.2  # outside the photo: absent
    k = coco18_from_blazepose(landmarks, (100, 200))
    assert k.present.sum() == 16 and not k.present[[R_ELBOW, L_ELBOW]].any()
    assert tuple(k.xy[NOSE]) == pytest.approx((1.0, 4.0))
    assert tuple(k.xy[NECK]) == pytest.approx(tuple((k.xy[R_SHOULDER] + k.xy[L_SHOULDER]) / 2))


def test_silhouette_keeps_the_background_as_it_is():
    img = photo("astronaut")
    plain = person_images(person=jpeg(img))
    kept = person_images(person=jpeg(img), silhouette=True)
    boxed = np.asarray(plain.frame.apply(Image.open(io.BytesIO(jpeg(img))).convert("RGB")), dtype=np.int16)
    black_plain = np.asarray(plain.masked_model).max(axis=2) == 0
    black_kept = np.asarray(kept.masked_model).max(axis=2) == 0
    assert black_kept.sum() < black_plain.sum(), "less is blacked out"
    assert (black_kept <= black_plain).all()
    changed = np.abs(np.asarray(kept.masked_model, dtype=np.int16) - boxed).max(axis=2) > 0
    assert (changed <= black_kept).all(), "outside the blacked-out body, the photo as it was"


def test_one_detector_per_process_safe_from_threads():
    img = photo("grace_hopper")
    assert get_detector() is get_detector()
    alone = get_detector().detect(img).keypoints
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: get_detector().detect(img).keypoints, range(4)))
    for k in results:
        assert np.array_equal(k.xy, alone.xy) and np.array_equal(k.confidence, alone.confidence)
