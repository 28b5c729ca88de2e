"""Draws service/examples/cloth.png: a T-shirt, flat on white, as shop garment photos are.

    python service/examples/draw_garment.py [OUT]

Knit texture, cylinder-like shading, folds, seams and a ribbed collar, drawn at
four times the size and scaled down so the edges are smooth; seeded, so the
committed file is what this script writes.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

WIDTH, HEIGHT = 192, 256  # the model's garment size
SCALE = 4
COLOUR = np.array([38, 112, 168], dtype=np.float32)  # a mid blue
OUT = Path(__file__).resolve().parent / "cloth.png"

# The outline in 192x256 units, clockwise from the left of the neckline.
BACK_NECK = [(72, 28), (84, 31), (96, 32), (108, 31), (120, 28)]
FRONT_NECK = [(72, 28), (84, 40), (96, 43), (108, 40), (120, 28)]
BODY = BACK_NECK + [(150, 38), (180, 72), (163, 104), (145, 90),
        (150, 224), (42, 224), (47, 90), (29, 104), (12, 72), (42, 38)]
SEAMS = [[(42, 38), (47, 90)], [(150, 38), (145, 90)]]  # where the sleeves are sewn on
HEMS = [[(43, 216), (149, 216)], [(19, 88), (35, 97)], [(173, 88), (157, 97)]]


def scaled(points):
    return [(x * SCALE, y * SCALE) for x, y in points]


def shading(rng: np.random.Generator) -> np.ndarray:
    """Brightness per pixel: rounder at the sides, light from the upper left, soft folds, knit."""
    h, w = HEIGHT * SCALE, WIDTH * SCALE
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    across = (x / w - 0.5) * 2
    light = 1.0 - 0.18 * across ** 2 - 0.10 * (y / h) + 0.05 * (1 - x / w)
    folds = 0.07 * np.sin(x / w * 9 * np.pi + 1.3 * np.sin(y / h * 3)) * (y / h)
    knit = 0.035 * np.sin(y / SCALE * np.pi) * np.sin(x / SCALE * np.pi * 0.5)
    grain = rng.normal(0, 0.025, (h, w)).astype(np.float32)
    return light + folds + knit + grain


def draw(out: Path = OUT) -> Path:
    rng = np.random.default_rng(7)
    size = (WIDTH * SCALE, HEIGHT * SCALE)
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).polygon(scaled(BODY), fill=255)

    fabric = np.clip(COLOUR * shading(rng)[..., None], 0, 255).astype(np.uint8)
    shirt = Image.fromarray(fabric)
    pen = ImageDraw.Draw(shirt)
    dark = tuple(int(c) for c in COLOUR * 0.55)
    # The inside of the back, seen between the two necklines, then the ribbed collar over both.
    pen.polygon(scaled(BACK_NECK + FRONT_NECK[::-1]), fill=tuple(int(c) for c in COLOUR * 0.4))
    pen.line(scaled(BACK_NECK), fill=tuple(int(c) for c in COLOUR * 0.9), width=3 * SCALE, joint="curve")
    pen.line(scaled(FRONT_NECK), fill=tuple(int(c) for c in COLOUR * 0.8), width=5 * SCALE, joint="curve")
    for seam in SEAMS:
        pen.line(scaled(seam), fill=dark, width=SCALE)
    for hem in HEMS:
        pen.line(scaled(hem), fill=dark, width=SCALE // 2)
    # Edges a touch darker, as a real garment's turn away from the light.
    edge = mask.filter(ImageFilter.GaussianBlur(3 * SCALE))
    rim = 0.75 + 0.25 * np.asarray(edge, dtype=np.float32)[..., None] / 255
    shirt = Image.fromarray(np.clip(np.asarray(shirt, dtype=np.float32) * rim, 0, 255).astype(np.uint8))

    canvas = Image.new("RGB", size, "white")
    canvas.paste(shirt, mask=mask)
    canvas.resize((WIDTH, HEIGHT), Image.LANCZOS).save(out, optimize=True)
    return out


if __name__ == "__main__":
    print(draw(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT))
