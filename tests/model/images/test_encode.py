"""Results out (model/images/encode.py): at the model's size or the original's, in each format."""
from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from model.images import Letterbox, encode_image, output_image
from tests.utils.pictures import gradient


def test_output_at_original_size():
    frame = Letterbox((300, 600), (192, 256))
    t = torch.zeros(3, 256, 192)
    assert output_image(t, frame, "model").size == (192, 256)
    assert output_image(t, frame, "original").size == (300, 600)
    with pytest.raises(ValueError):
        output_image(t, frame, "huge")


@pytest.mark.parametrize("fmt,magic", [("jpeg", b"\xff\xd8"), ("png", b"\x89PNG"), ("webp", b"RIFF")])
def test_encode_formats(fmt, magic):
    data = encode_image(gradient(), fmt)
    assert data.startswith(magic)
    assert Image.open(io.BytesIO(data)).size == (48, 64)
