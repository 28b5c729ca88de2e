"""model/images/garment.py: a garment photo on a plain light background reaches the model placed as
VITON's garments are (fitted to 180 x 248 of 192 x 256, centred, on white); one already placed so,
and anything that is not a product shot, only letterboxed as before."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from model.images import Letterbox, assemble_inputs, decode_levels_to_fit, image_to_levels
from model.images.garment import garment_extent, place_garment
from tests.utils import REPO
from tests.utils.photos import jpeg, photo

CLOTH = (REPO / "service" / "examples" / "cloth.png").read_bytes()
MODEL_WH = (192, 256)


def placed(data: bytes) -> torch.Tensor:
    picture, size_wh = decode_levels_to_fit(data, "cloth", MODEL_WH)
    return place_garment(picture, size_wh, MODEL_WH)


def letterboxed(data: bytes) -> torch.Tensor:
    picture, size_wh = decode_levels_to_fit(data, "cloth", MODEL_WH)
    return Letterbox(size_wh, MODEL_WH).fit_levels(picture)


def extent(levels: torch.Tensor) -> tuple[int, int, int, int]:
    found = garment_extent(levels)
    assert found is not None
    return found[0]


def shop_shot(background: tuple[int, int, int], size_wh=(1600, 1600), garment_wh=(420, 560), at=(300, 700)) -> bytes:
    """The example T-shirt small in a wide frame of ``background``, as a product photo with margins."""
    shirt = Image.open(io.BytesIO(CLOTH)).convert("RGB").resize(garment_wh, Image.LANCZOS)
    white = np.asarray(shirt).min(axis=2) > 250  # the shirt's own white background takes the frame's colour
    pixels = np.asarray(shirt).copy()
    pixels[white] = background
    canvas = Image.new("RGB", size_wh, background)
    canvas.paste(Image.fromarray(pixels), at)
    return jpeg(canvas)


def test_a_garment_already_placed_as_vitons_is_only_letterboxed():
    assert torch.equal(placed(CLOTH), letterboxed(CLOTH))
    x0, y0, x1, y1 = extent(placed(CLOTH))
    assert (x1 - x0, y1 - y0) == (168, 197)  # a little smaller than VITON's 180: within its spread


@pytest.mark.parametrize("background", [(255, 255, 255), (232, 230, 226)], ids=["white", "light grey"])
def test_a_product_shot_with_margins_is_cut_and_placed_on_white(background):
    got = placed(shop_shot(background))
    x0, y0, x1, y1 = extent(got)
    assert x1 - x0 >= 178 or y1 - y0 >= 246, "fitted to VITON's 180 x 248"
    assert abs((x0 + x1) / 2 - 96) <= 1 and abs((y0 + y1) / 2 - 128) <= 1, "centred"
    assert (got[:, :4] == 255).all() and (got[:, :, :4] == 255).all(), "on white, the shop's grey gone"
    # The same shirt, only larger: close to the example itself placed the same way.
    same = place_garment(image_to_levels(Image.open(io.BytesIO(CLOTH)).convert("RGB")), (192, 256), MODEL_WH)
    assert extent(got) == pytest.approx(extent(same), abs=14)


def test_anything_but_a_plain_light_background_is_only_letterboxed():
    for data in (jpeg(photo("astronaut")), jpeg(Image.fromarray(np.random.default_rng(0).integers(
            0, 255, (300, 200, 3), dtype=np.uint8))), shop_shot((60, 60, 60))):
        assert torch.equal(placed(data), letterboxed(data))


def test_assembled_inputs_carry_the_placed_garment():
    masked = torch.zeros((3, 256, 192), dtype=torch.uint8)
    inputs = assemble_inputs(masked, masked, Letterbox((192, 256), MODEL_WH), shop_shot((255, 255, 255)))
    assert torch.equal(inputs.cloth, placed(shop_shot((255, 255, 255))))
