"""Real photographs for the person detector's tests (tests/fixtures/photos/README.md)."""
from __future__ import annotations

import io

from PIL import Image, ImageOps

from . import FIXTURES

PHOTOS = FIXTURES / "photos"


def photo(name: str) -> Image.Image:
    return Image.open(PHOTOS / f"{name}.jpg").convert("RGB")


def jpeg(img: Image.Image, **extra) -> bytes:
    out = io.BytesIO()
    img.save(out, "JPEG", quality=92, **extra)
    return out.getvalue()


def group_photo(mirrored: bool = False) -> Image.Image:
    """Two people: Grace Hopper large at the top left (``mirrored``: right), the astronaut smaller
    at the bottom right (left); square, so both stay big enough once letterboxed into 64 x 64."""
    group = Image.new("RGB", (800, 800), (255, 255, 255))
    group.paste(photo("grace_hopper"), (0, 0))
    group.paste(photo("astronaut").resize((300, 300)), (500, 500))
    return ImageOps.mirror(group) if mirrored else group
