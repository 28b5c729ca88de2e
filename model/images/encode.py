"""The network's result out: as an image at model size or the person's original size, then as
bytes of an image format."""
from __future__ import annotations

import io

import torch
from PIL import Image

from .letterbox import Letterbox
from .levels import tensor_to_image


def output_image(t: torch.Tensor, frame: Letterbox | None = None, size: str = "model") -> Image.Image:
    """The result as 8-bit RGB at model size, or mapped back to the person's original size."""
    if size not in ("model", "original"):
        raise ValueError(f"size must be 'model' or 'original', not {size!r}")
    img = tensor_to_image(t)
    return frame.restore(img) if size == "original" and frame is not None else img


ENCODE_FORMATS = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}
MEDIA_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}


def encode_image(img: Image.Image, fmt: str = "jpeg", quality: int = 90) -> bytes:
    """RGB image -> bytes of ``fmt`` (jpeg, png or webp)."""
    if fmt not in ENCODE_FORMATS:
        raise ValueError(f"format must be one of {sorted(ENCODE_FORMATS)}, not {fmt!r}")
    buf = io.BytesIO()
    options = {"quality": quality} if fmt in ("jpeg", "webp") else {"optimize": False}
    img.save(buf, format=ENCODE_FORMATS[fmt], **options)
    return buf.getvalue()
