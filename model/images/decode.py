"""Bytes of any format Pillow reads -> upright 8-bit RGB images or levels, refusing what is not
an image (``ImageError``) or is too large (``ImageTooLarge``), and decoding a large JPEG at a
reduced scale when it is about to be letterboxed smaller. ``header_pixels`` says from the header
alone what decoding will take, for callers that decide where (or whether) to decode."""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Union

import numpy as np
import simplejpeg
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .levels import WHITE, image_to_levels

# Decompression-bomb guard for callers that set no limit of their own.
DEFAULT_MAX_PIXELS = 40_000_000

ImageSource = Union[bytes, bytearray, memoryview, Image.Image]


class ImageError(ValueError):
    """An input that is not a usable image; ``field`` names which input."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class ImageTooLarge(ImageError):
    """More pixels than allowed, detected from the header before decoding."""


# Rows of a 16-bit image rescaled at a time: the rescale's 4-byte temporaries stay a few MB.
_RESCALE_PIXELS = 1 << 20


def _16bit_to_8bit(img: Image.Image) -> Image.Image:
    """round(v * 255 / 65535) in integers, strip by strip (the float64 way took 8 bytes a pixel,
    twice over: 1 GB for 6324 x 6324 pixels of 78 kB of PNG). No v lands on a half, so this is
    exactly the float rounding."""
    levels = np.asarray(img)
    out = np.empty(levels.shape, dtype=np.uint8)
    rows = max(1, _RESCALE_PIXELS // max(1, levels.shape[1]))
    for top in range(0, levels.shape[0], rows):
        out[top:top + rows] = (levels[top:top + rows].astype(np.uint32) * 255 + 32767) // 65535
    return Image.fromarray(out)


def _to_rgb(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    if img.mode.startswith("I;16"):
        img = _16bit_to_8bit(img)
    elif img.mode in ("I", "F"):
        # 32-bit and float greyscale: rescale to 8 bits instead of clipping.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        img = Image.fromarray(arr)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, background)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img if img.mode == "RGB" else img.convert("RGB")


def open_image(source: ImageSource, field: str, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Bytes of any format Pillow reads (or a PIL image), opened but not decoded.

    Raises ImageError naming ``field`` for anything that is not an image,
    ImageTooLarge when the header announces more than ``max_pixels``.
    """
    if isinstance(source, Image.Image):
        img = source
    else:
        if not source:
            raise ImageError(field, "empty file")
        try:
            img = Image.open(io.BytesIO(bytes(source)))
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
            raise ImageError(field, "not an image Pillow can read") from None
    width, height = img.size
    if width < 1 or height < 1:
        raise ImageError(field, "image has no pixels")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLarge(field, f"{width}x{height} is {width * height} pixels, over the limit of {max_pixels}")
    return img


def decode_image(source: ImageSource, field: str, *, background=WHITE,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Bytes of any format Pillow reads (or a PIL image) -> upright 8-bit RGB.

    EXIF orientation is applied; transparency is flattened onto ``background``.
    Raises as ``open_image`` does, and ImageError for a corrupt or truncated image.
    """
    return _upright_rgb(open_image(source, field, max_pixels=max_pixels), field, background)


def decode_to_fit(source: ImageSource, field: str, target_wh: tuple[int, int], *, background=WHITE,
                  max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[Image.Image, tuple[int, int]]:
    """As ``decode_image``, for an image about to be letterboxed into ``target_wh`` (W, H):
    a JPEG at least 2 x REDUCED_DECODE_MARGIN times larger is decoded by libjpeg at 1/2, 1/4
    or 1/8 scale, never below REDUCED_DECODE_MARGIN times the size it will be scaled to, so
    the letterbox's own resize still does the last step. Returns the image and the upright
    size (W, H) of the whole picture, the frame a Letterbox maps (``Letterbox.fit``).
    """
    img, full_wh = _open_to_fit(source, field, target_wh, max_pixels)
    return _upright_rgb(img, field, background), full_wh


def decode_levels_to_fit(source: ImageSource, field: str, target_wh: tuple[int, int], *, background=WHITE,
                         max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[torch.Tensor, tuple[int, int]]:
    """``decode_to_fit`` as (3, H, W) uint8 levels in pixel order."""
    decoded = _turbo_levels_to_fit(source, target_wh, max_pixels)
    if decoded is not None:
        return decoded
    img, full_wh = _open_to_fit(source, field, target_wh, max_pixels)
    return image_to_levels(_upright_rgb(img, field, background)), full_wh


def _open_to_fit(source: ImageSource, field: str, target_wh: tuple[int, int],
                 max_pixels: int | None) -> tuple[Image.Image, tuple[int, int]]:
    """Opened, not decoded, at the reduced scale ``decode_to_fit`` decodes at; and the upright full size."""
    img = open_image(source, field, max_pixels=max_pixels)
    width, height = img.size
    swapped = _orientation(img) in _QUARTER_TURNS
    full_wh = (height, width) if swapped else (width, height)
    reduced_wh = _reduced_decode_size((width, height), full_wh, target_wh)
    if reduced_wh is not None:  # only JPEG files implement draft; for every other source it changes nothing
        img.draft(None, reduced_wh)
    return img, full_wh


def _reduced_decode_size(stored_wh: tuple[int, int], upright_wh: tuple[int, int],
                         target_wh: tuple[int, int]) -> tuple[int, int] | None:
    """The size (as stored) a JPEG may be decoded down to for a letterbox into ``target_wh``:
    REDUCED_DECODE_MARGIN times the size it will be scaled to; None when it is not larger."""
    scale = min(target_wh[0] / upright_wh[0], target_wh[1] / upright_wh[1]) * REDUCED_DECODE_MARGIN
    return (math.ceil(stored_wh[0] * scale), math.ceil(stored_wh[1] * scale)) if scale < 1 else None


def _turbo_levels_to_fit(source: ImageSource, target_wh: tuple[int, int],
                         max_pixels: int | None) -> tuple[torch.Tensor, tuple[int, int]] | None:
    """A plain JPEG (colour or grey, no APP1 block, so no EXIF or XMP turn) decoded by simplejpeg
    at the scale Pillow's draft picks: the same libjpeg-turbo with the same settings, so the same
    pixels (tests/model/images/test_decode.py), at a third to a half of Pillow's CPU time (no 4-byte
    pixels, no decoding loop or header parsing in Python). None for anything else, and for
    whatever simplejpeg refuses: Pillow then decodes it, or says what is wrong with it."""
    if isinstance(source, Image.Image) or not _plain_jpeg(source):
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(source)
    except ValueError:
        return None
    pixel_limit = min(limit for limit in (max_pixels, Image.MAX_IMAGE_PIXELS, math.inf) if limit)
    if colorspace not in ("YCbCr", "Gray", "RGB") or width < 1 or height < 1 or width * height > pixel_limit:
        return None  # and Pillow's refusals of too many pixels stay Pillow's
    reduced_wh = _reduced_decode_size((width, height), (width, height), target_wh)
    reduction = 1 if reduced_wh is None else _draft_reduction((width, height), reduced_wh)
    size_wh = (-(-width // reduction), -(-height // reduction))
    try:
        pixels = simplejpeg.decode_jpeg(source, "RGB", min_width=size_wh[0], min_height=size_wh[1])
    except ValueError:
        return None
    if pixels.shape[:2] != (size_wh[1], size_wh[0]):  # another of libjpeg-turbo's scales than Pillow's
        return None
    return torch.from_numpy(pixels).permute(2, 0, 1), (width, height)


def _draft_reduction(size_wh: tuple[int, int], requested_wh: tuple[int, int]) -> int:
    """The reduction Pillow's JPEG ``draft`` picks: the largest of 8, 4, 2 and 1 that leaves at
    least ``requested_wh``."""
    fits = min(size_wh[0] // requested_wh[0], size_wh[1] // requested_wh[1])
    return next(s for s in (8, 4, 2, 1) if fits >= s)


def _plain_jpeg(data: bytes | bytearray | memoryview) -> bool:
    """JPEG bytes with no APP1 block (EXIF or XMP, where an orientation would be) before the image data."""
    data = memoryview(data)
    if data[:3] != b"\xff\xd8\xff":
        return False
    at = 2
    while at + 4 <= len(data) and data[at] == 0xFF:
        marker = data[at + 1]
        if marker == 0xFF:  # a fill byte
            at += 1
        elif marker == 0xDA:  # start of scan: the image data follows
            return True
        elif marker == 0xE1:
            return False
        else:
            at += 2 + (data[at + 2] << 8 | data[at + 3])
    return False


# libjpeg's reduced decoding averages in the DCT domain, the letterbox resizes bicubically:
# decoding at twice the final size at least keeps the two within a few levels (tests/model/images/test_decode.py).
REDUCED_DECODE_MARGIN = 2
_ORIENTATION_TAG = 0x0112
_QUARTER_TURNS = (5, 6, 7, 8)


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(_ORIENTATION_TAG, 1))
    except (OSError, ValueError, SyntaxError, TypeError):
        return 1  # an unreadable EXIF block: ImageOps.exif_transpose would not turn it either


def _upright_rgb(img: Image.Image, field: str, background) -> Image.Image:
    try:
        img.load()
        if _orientation(img) != 1:  # exif_transpose copies even an upright image
            img = ImageOps.exif_transpose(img)
        return _to_rgb(img, background)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageError(field, f"corrupt or truncated image ({exc})") from None


# Bytes a pixel takes in Pillow's own image, by how many bits the header gives it (Pillow keeps
# 3- and 4-band and 32-bit pixels in 4 bytes, 16-bit grey in 2).
_HELD_BYTES = {1: 1, 8: 1, 16: 2}
# What decoding, the turn to 8-bit RGB, the levels and the letterbox's resize take beside Pillow's
# own pixels, per pixel decoded: at most 14 bytes measured (peak RSS over decode_levels_to_fit into
# 256x192: 6000x6000 PNGs of L 10.5, RGB 9.6, RGBA 13.4 bytes a pixel, a 16383x2441 WebP 17, a
# 16-bit grey PNG 25 before _16bit_to_8bit).
WORK_BYTES_PER_PIXEL = 14


@dataclass(frozen=True)
class HeaderPixels:
    """What an image's header says of it, before a pixel is decoded: its size as stored, its bits
    per pixel (Pillow's mode: 24 for RGB, 16 for 16-bit grey), and the size it will be decoded at
    (a JPEG about to be letterboxed smaller is decoded at 1/2 to 1/8 scale)."""
    size_wh: tuple[int, int]
    bits_per_pixel: int
    decoded_wh: tuple[int, int]

    @property
    def pixels(self) -> int:
        return self.size_wh[0] * self.size_wh[1]

    @property
    def decode_bytes(self) -> int:
        """The memory decoding it will hold at its peak (WORK_BYTES_PER_PIXEL beside Pillow's pixels)."""
        held = _HELD_BYTES.get(self.bits_per_pixel, 4)
        return self.decoded_wh[0] * self.decoded_wh[1] * (held + WORK_BYTES_PER_PIXEL)


def header_pixels(source: ImageSource, target_wh: tuple[int, int] | None = None) -> HeaderPixels | None:
    """The header's account of ``source`` (to be letterboxed into ``target_wh``, when given), read
    without decoding (a PNG's EXIF is not looked for: Pillow decodes the whole image to find it);
    None for what Pillow does not read as an image (decoding it then says why)."""
    if isinstance(source, Image.Image):
        return HeaderPixels(source.size, _bits(source.mode), source.size)
    try:
        img = Image.open(io.BytesIO(bytes(source)))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None
    width, height = img.size
    decoded_wh = (width, height)
    if target_wh is not None and img.format == "JPEG" and width > 0 and height > 0:
        upright_wh = (height, width) if _orientation(img) in _QUARTER_TURNS else (width, height)
        reduced_wh = _reduced_decode_size((width, height), upright_wh, target_wh)
        if reduced_wh is not None:
            reduction = _draft_reduction((width, height), reduced_wh)
            decoded_wh = (-(-width // reduction), -(-height // reduction))
    return HeaderPixels((width, height), _bits(img.mode), decoded_wh)


def _bits(mode: str) -> int:
    if mode.startswith("I;16"):
        return 16
    if mode == "1":
        return 1
    return 8 * Image.getmodebands(mode) if mode not in ("I", "F") else 32
