"""model/images/composite.py on a real photo: the result goes back into the photo at its own size,
only under the feathered mask; every other pixel is the photo's own, bit for bit through PNG,
after EXIF orientation; and the seam carries no colour step."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from model.images import encode_image, output_image, tensor_to_image
from model.images.composite import MAX_SHIFT
from model.person import person_images
from tests.utils.photos import photo

FRAME_WH = (900, 1200)


def png(img: Image.Image, **extra) -> bytes:
    out = io.BytesIO()
    img.save(out, "PNG", **extra)
    return out.getvalue()


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="module")
def scene() -> Image.Image:
    """The astronaut, half-body, in a larger frame of another colour (so the box reaches past her photo)."""
    canvas = Image.new("RGB", FRAME_WH, (70, 96, 84))
    canvas.paste(photo("astronaut").resize((560, 560)), (200, 380))
    return canvas


@pytest.fixture(scope="module")
def person(scene):
    return person_images(person=png(scene), keep_photo=True)


def test_only_pixels_under_the_mask_change_and_png_keeps_the_rest_bit_equal(scene, person):
    composite = person.composite
    result = tensor_to_image(255 - composite.reference)  # as far from the photo as a result can be
    back = Image.open(io.BytesIO(encode_image(output_image(255 - composite.reference, composite, "original"), "png")))
    assert back.size == FRAME_WH and np.array_equal(pixels(back), pixels(composite.restore(result)))
    mask = np.asarray(composite.photo_mask()) > 0
    changed = (pixels(back) != pixels(scene)).any(axis=2)
    assert not (changed & ~mask).any(), "outside the mask, the photo's own pixels"
    assert changed[mask].mean() > 0.9, "under it, the result's"
    # The mask in the photo is the model's mask through the box, no larger (a pixel of the model's frame).
    box = composite.photo_box()
    rows, cols = np.nonzero(mask)
    extent = (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
    assert np.abs(np.subtract(box, extent)).max() <= 1  # an edge pixel may scale to 0
    left, top = person.frame.box[:2]
    support = np.nonzero(person.mask.numpy())
    assert abs(box[1] - (top + support[0].min() / person.frame.scale)) <= 2 / person.frame.scale


def test_what_the_masked_model_blacks_out_is_replaced_whole(person):
    black = (person.masked_model_levels == 0).all(dim=0) & (person.composite.reference > 16).any(dim=0)
    assert black.sum() > 1000 and (person.mask[black] == 255).all()
    assert (person.mask == 0).float().mean() > 0.1, "the face and the background stay the photo's"


def test_a_rotated_photo_comes_back_upright(scene):
    exif = Image.Exif()
    exif[0x0112] = 8  # "rotate 90 counter-clockwise to view"
    rotated = person_images(person=png(scene.transpose(Image.Transpose.ROTATE_270), exif=exif), keep_photo=True)
    result = rotated.composite.restore(tensor_to_image(rotated.composite.reference))
    unchanged = np.asarray(rotated.composite.photo_mask()) == 0
    assert result.size == FRAME_WH
    assert np.array_equal(pixels(result)[unchanged], pixels(scene)[unchanged])


def test_the_seam_has_no_colour_step(scene, person):
    """A result whose colours drift (here +20 everywhere) meets the photo without a step at the
    mask's feathered edge: the drift measured just outside the mask is taken off."""
    composite = person.composite

    def drifted(by: int) -> Image.Image:
        return tensor_to_image((composite.reference.to(torch.int16) + by).clamp(0, 255).to(torch.uint8))

    mask = np.asarray(composite.photo_mask())
    seam = (mask > 0) & (mask < 255)
    photo_px = pixels(scene)

    def step(result: Image.Image) -> float:
        """How far the feathered edge's colour is from the photo's there, in levels (the worst channel)."""
        return float(np.abs(pixels(result)[seam].mean(axis=0) - photo_px[seam].mean(axis=0)).max())

    assert seam.sum() > 1000
    faithful = step(composite.restore(drifted(0)))
    assert faithful < 3
    assert composite.colour_shift(torch.from_numpy(np.array(drifted(20))).permute(2, 0, 1)).tolist() == [-20] * 3
    assert step(composite.restore(drifted(20))) < faithful + 1.5
    # A drift past MAX_SHIFT is only partly taken off: the same measure sees the step that is left.
    assert step(composite.restore(drifted(MAX_SHIFT + 60))) > faithful + 15
