"""The letterbox (model/images/letterbox.py): odd aspect ratios fitted and restored, and levels fitted
straight from the decoded picture as the letterbox drawn on a canvas."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from model.images import BLACK, Letterbox, image_to_levels, resize_bicubic
from tests.utils.pictures import gradient


@pytest.mark.parametrize("size", [(192, 256), (1000, 500), (300, 1200), (37, 91)])
def test_letterbox_keeps_aspect_and_round_trips(size):
    frame = Letterbox(size, (192, 256))
    left, top, right, bottom = frame.content_box
    assert 0 <= left and right <= 192 and 0 <= top and bottom <= 256
    assert right - left == 192 or bottom - top == 256  # fits one side exactly
    assert abs((right - left) / (bottom - top) - size[0] / size[1]) < 0.05 * size[0] / size[1] + 0.03
    src = gradient(*size)
    back = frame.restore(frame.apply(src))
    assert back.size == size
    if min(size) >= 192:
        assert np.abs(np.asarray(back, np.int16) - np.asarray(src, np.int16)).mean() < 6
    corners = np.array([[0, 0], [size[0], size[1]]])
    assert np.allclose(frame.apply_points(corners), [[left, top], [right, bottom]])


@pytest.mark.parametrize("size", [(192, 256), (384, 512), (1000, 500), (300, 1200), (37, 91)])
def test_fit_levels_is_the_letterbox_drawn_on_a_canvas(size):
    """Levels straight from the decoded image: what resizing, then pasting on a canvas of the
    pad colour, gives (shrinking, growing, padding, or none of them)."""
    frame = Letterbox(size, (192, 256))
    src = gradient(*size)
    left, top, right, bottom = frame.content_box
    canvas = Image.new("RGB", (192, 256), BLACK)
    canvas.paste(resize_bicubic(src, (right - left, bottom - top)) if src.size != (right - left, bottom - top)
                 else src, (left, top))
    levels = frame.fit_levels(src, BLACK)
    assert levels.shape == (3, 256, 192) and levels.permute(1, 2, 0).is_contiguous()  # pixel order
    assert torch.equal(levels, image_to_levels(canvas))
    assert torch.equal(image_to_levels(frame.fit(src, BLACK)), levels)
