"""model/person/framing.py on the suite's real photos: the crop box puts the person where VITON's
median person is, wherever and however large they are in the photo, mirrored and rotated too; and
a person is refused only when too small in the photo itself to draw."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from model.images import Crop
from model.person import DetectionError, Keypoints, get_detector, person_images
from model.person.framing import (MIN_TORSO_PX, SHOULDER_WIDTH, SHOULDERS_XY, TORSO, check_person_size,
                                  person_crop, torso_length)
from model.person.keypoints import L_HIP, L_SHOULDER, R_HIP, R_SHOULDER
from tests.utils.photos import jpeg, photo

MODEL_WH = (192, 256)


def png(img: Image.Image, **extra) -> bytes:
    out = io.BytesIO()
    img.save(out, "PNG", **extra)
    return out.getvalue()


def framed(keypoints: Keypoints, crop: Crop) -> tuple[np.ndarray, float]:
    """The shoulders' middle in the model's frame, and the torso (or its equal) there."""
    points = crop.apply_points(keypoints.xy)
    torso, _ = torso_length(Keypoints(points, keypoints.confidence))
    return (points[R_SHOULDER] + points[L_SHOULDER]) / 2, torso


def assert_framed_as_viton(keypoints: Keypoints, crop: Crop) -> None:
    left, top, right, bottom = crop.box
    assert (right - left) * 4 == (bottom - top) * 3, "3:4"
    shoulders, torso = framed(keypoints, crop)
    # The box is whole pixels of the photo: within one of them, scaled, of VITON's median person.
    slack = 1 + crop.scale
    assert np.allclose(shoulders, SHOULDERS_XY, atol=slack), shoulders
    assert abs(torso - TORSO) <= 2 * slack, torso


def viton_person(scale: float, at: tuple[float, float], hips: bool = True) -> Keypoints:
    """VITON's median person, ``scale`` times its size, shoulders' middle at ``at`` (photo pixels)."""
    xy = np.zeros((18, 2))
    half = SHOULDER_WIDTH / 2 * scale
    xy[R_SHOULDER], xy[L_SHOULDER] = (at[0] - half, at[1]), (at[0] + half, at[1])
    xy[R_HIP], xy[L_HIP] = (at[0] - 0.6 * half, at[1] + TORSO * scale), (at[0] + 0.6 * half, at[1] + TORSO * scale)
    confidence = np.zeros(18)
    confidence[[R_SHOULDER, L_SHOULDER] + ([R_HIP, L_HIP] if hips else [])] = 0.9
    return Keypoints(xy, confidence)


@pytest.mark.parametrize("photo_wh, scale, at", [
    ((4000, 3000), 2.0, (3500, 400)),  # landscape, the person small at the right edge: padded on the right
    ((3000, 4000), 12.0, (1500, 1000)),  # a close half-body shot: the box reaches past the photo below
    ((1500, 2000), 4.0, (750, 700)),  # full body, inside the photo
    ((600, 800), 0.8, (100, 100)),  # smaller in the photo than in the model: scaled up
])
def test_the_box_puts_shoulders_and_torso_where_viton_does(photo_wh, scale, at):
    for hips in (True, False):  # without hips: the shoulders' width sizes the box
        keypoints = viton_person(scale, at, hips)
        assert_framed_as_viton(keypoints, person_crop(keypoints, photo_wh, MODEL_WH))


def test_another_model_size_keeps_the_shares_of_the_frames_height():
    keypoints = viton_person(3.0, (800, 600))
    crop = person_crop(keypoints, (1600, 1600), (64, 64))
    assert crop.box[2] - crop.box[0] == crop.box[3] - crop.box[1], "the model's aspect ratio: square"
    shoulders, torso = framed(keypoints, crop)
    assert abs(shoulders[1] - SHOULDERS_XY[1] / 4) < 1 and abs(torso - TORSO / 4) < 1
    assert abs(shoulders[0] - 32) < 1


def test_a_photo_at_the_models_size_is_taken_as_framed():
    keypoints = viton_person(0.7, (96, 90))
    assert person_crop(keypoints, MODEL_WH, MODEL_WH) == Crop.whole(MODEL_WH)


@pytest.fixture(scope="module")
def astronaut():
    """A real photo placed in larger frames: (frame, the photo's box in it) -> what person_images gives."""
    img = photo("astronaut")

    def place(frame_wh: tuple[int, int], box: tuple[int, int, int, int], mirrored: bool = False):
        canvas = Image.new("RGB", frame_wh, (118, 128, 120))
        canvas.paste(img.resize((box[2] - box[0], box[3] - box[1])), box[:2])
        return ImageOps.mirror(canvas) if mirrored else canvas
    return place


def test_a_real_photo_anywhere_in_a_frame_is_framed_by_its_keypoints(astronaut):
    placements = [((1200, 1600), (300, 300, 900, 900)),  # portrait frame, in the middle
                  ((2000, 1500), (100, 700, 800, 1400)),  # landscape frame, bottom left: the box leaves the photo
                  ((900, 1200), (500, 40, 860, 400))]  # small, top right
    relative = []
    for frame_wh, box in placements:
        got = person_images(person=jpeg(astronaut(frame_wh, box)))
        assert got.frame.source_size_wh == frame_wh
        assert_framed_as_viton(got.keypoints, got.frame)
        # The box, in the placed photo's own units: where the person is in it, not where it is in the frame.
        width = box[2] - box[0]
        relative.append([(got.frame.box[i] - box[i % 2]) / width for i in range(4)])
    spread = np.ptp(relative, axis=0)
    assert spread.max() < 0.12, relative  # the detector's own wobble across scales, a few percent


def test_a_mirrored_photo_has_the_mirrored_box(astronaut):
    frame_wh, box = (1200, 1600), (200, 300, 800, 900)
    straight = person_images(person=jpeg(astronaut(frame_wh, box))).frame.box
    mirrored = person_images(person=jpeg(astronaut(frame_wh, box, mirrored=True))).frame.box
    expected = (frame_wh[0] - straight[2], straight[1], frame_wh[0] - straight[0], straight[3])
    # The detector itself is not exactly mirror-symmetric (measured: 20 px of a 476 px box).
    assert np.abs(np.subtract(mirrored, expected)).max() <= 0.06 * (straight[3] - straight[1])


def test_a_rotated_photo_is_framed_upright():
    """EXIF orientation 6, as a phone writes it: the box is in the upright photo's pixels, the same as
    for the upright photo itself (PNG, so that both hold the same pixels once upright)."""
    upright = photo("grace_hopper")
    exif = Image.Exif()
    exif[0x0112] = 6
    got = person_images(person=png(upright.transpose(Image.Transpose.ROTATE_90), exif=exif))
    assert got.frame.source_size_wh == upright.size
    assert got.frame.box == person_images(person=png(upright)).frame.box


def test_a_person_a_fifth_of_a_12_megapixel_photos_height_is_served():
    canvas = Image.new("RGB", (3000, 4000), (236, 236, 232))
    canvas.paste(photo("grace_hopper").resize((683, 800)), (1400, 2100))
    got = person_images(person=jpeg(canvas))
    assert_framed_as_viton(got.keypoints, got.frame)
    assert got.masked_model.size == MODEL_WH


def test_only_a_torso_too_small_to_draw_is_refused():
    keypoints = viton_person(MIN_TORSO_PX / TORSO * 1.02, (500, 500))
    check_person_size(keypoints, (1000, 1000))  # just over: served
    small = viton_person(MIN_TORSO_PX / TORSO * 0.98, (500, 500), hips=False)
    with pytest.raises(DetectionError) as err:
        check_person_size(small, (1000, 1000))
    assert err.value.code == "person_too_small" and "judged from the shoulders' width" in err.value.message


def test_the_detector_finds_the_same_person_the_box_was_made_for():
    """Detected keypoints, not only given ones, go into the box (the most prominent person's)."""
    sent = jpeg(photo("grace_hopper"))
    img = Image.open(io.BytesIO(sent)).convert("RGB")
    keypoints = get_detector().detect(img).keypoints
    assert person_images(person=sent).frame == person_crop(keypoints, img.size, MODEL_WH)
