"""The network's result out: as an image at model size or the person's original size, then as
bytes of an image format. The output options' choices and defaults are defined here, once."""
from __future__ import annotations

import io
from typing import Literal, get_args

import torch
from PIL import Image

from .composite import Composite
from .crop import Crop
from .letterbox import Letterbox
from .levels import tensor_to_image

# Which size a result is returned at: the model's, or the person image's own (the letterbox undone, or
# the result composited into the person's photo).
OutputSize = Literal["model", "original"]
OUTPUT_SIZES: tuple[str, ...] = get_args(OutputSize)
OutputFormat = Literal["jpeg", "png", "webp"]
OUTPUT_FORMATS: tuple[str, ...] = get_args(OutputFormat)
ENCODE_FORMATS = {fmt: fmt.upper() for fmt in OUTPUT_FORMATS}  # Pillow's names
MEDIA_TYPES = {fmt: f"image/{fmt}" for fmt in OUTPUT_FORMATS}
# JPEG and WebP quality when none is asked for (the service's and the CLI's).
DEFAULT_QUALITY = 90
# The longest side each format can hold (libjpeg: 65500; libwebp: 16383; PNG: 2^31 - 1): a larger
# image fails in the encoder, after the work is done, so it is refused before (output_size_error).
MAX_SIDE = {"jpeg": 65_500, "webp": 16_383, "png": 2**31 - 1}


def output_size_error(size_wh: tuple[int, int], fmt: OutputFormat) -> str | None:
    """Why an output of ``size_wh`` can not be encoded as ``fmt``; None when it can."""
    if max(size_wh) <= MAX_SIDE[fmt]:
        return None
    return (f"a {fmt.upper()} holds at most {MAX_SIDE[fmt]} pixels a side, and the result at the person "
            f"image's size would be {size_wh[0]}x{size_wh[1]}")


def output_image(t: torch.Tensor, frame: Letterbox | Crop | Composite | None = None,
                 output_size: OutputSize = "model") -> Image.Image:
    """The result as 8-bit RGB at model size, or mapped back to the person's original size (``frame.restore``:
    a Composite puts it into the photo)."""
    if output_size not in OUTPUT_SIZES:
        raise ValueError(f"size must be 'model' or 'original', not {output_size!r}")
    img = tensor_to_image(t)
    return frame.restore(img) if output_size == "original" and frame is not None else img


def encode_image(img: Image.Image, fmt: OutputFormat = "jpeg", quality: int = DEFAULT_QUALITY) -> bytes:
    """RGB image -> bytes of ``fmt`` (jpeg, png or webp)."""
    if fmt not in ENCODE_FORMATS:
        raise ValueError(f"format must be one of {sorted(ENCODE_FORMATS)}, not {fmt!r}")
    buf = io.BytesIO()
    options = {"quality": quality} if fmt in ("jpeg", "webp") else {"optimize": False}
    img.save(buf, format=ENCODE_FORMATS[fmt], **options)
    return buf.getvalue()
