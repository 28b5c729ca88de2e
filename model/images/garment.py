"""Geometry policy for a garment photo: placed in the model's frame as VITON places its garments.

VITON's garments (bench/viton_framing.py, bench/results/viton-framing.json, docs/framing.md:
the cloth masks of its 14,221 training pairs, pixels of the 192 x 256 frame) fill their frame:
each is scaled to fit a box of 180 x 248 (6 px beside it, 4 above and below; the median
garment is 180 wide, the tallest 248), and centred (median centre (96, 128)), on white.
A product shot with wide margins would reach the model smaller than any of them.

So a garment photo on a plain light background (its border of one light colour) is cut to the
garment, its extent found against that background, and placed by VITON's rule on white; the
background's colour inside the cut fades to white. A garment already placed within VITON's
spread (its fitting scale within ``FRAMED_SCALE``, its centre near VITON's) is only
letterboxed, as before, and so is any photo whose background is not plain and light.
"""
from __future__ import annotations

import torch

from .crop import Box
from .letterbox import Letterbox
from .levels import WHITE, resize_levels

VITON_FRAME_WH = (192, 256)
VITON_GARMENT_BOX_WH = (180, 248)  # what a garment is scaled to fit, centred in the frame
# Taken as framed: VITON's own fitting scales lie in 0.95-1.10 (p1-p99), their centres' x in
# 94.5-97.5 and y in 99.5-130 (frame pixels); a little wider here.
FRAMED_SCALE = (0.9, 1.1)
FRAMED_CENTRE_X = 6  # frame pixels either side of the middle
FRAMED_CENTRE_Y = (96, 132)
# The background: the border's median colour, each channel at least LIGHT, and at least
# PLAIN_SHARE of the border within TOLERANCE of it (the largest channel difference).
BORDER = 2  # pixels
LIGHT = 200
PLAIN_SHARE = 0.9
TOLERANCE = 24
SPECK_SHARE = 0.01  # a row or column is the garment's when more than this share of it differs


def garment_extent(levels: torch.Tensor) -> tuple[Box, torch.Tensor] | None:
    """The garment's box in a (3, H, W) uint8 picture, and the background's colour (3,); None when
    the background is not plain and light (a model, a scene, a texture: nothing to cut)."""
    height, width = levels.shape[1:]
    if min(height, width) <= 4 * BORDER:
        return None
    border = torch.cat([levels[:, :BORDER].reshape(3, -1), levels[:, -BORDER:].reshape(3, -1),
                        levels[:, :, :BORDER].reshape(3, -1), levels[:, :, -BORDER:].reshape(3, -1)], dim=1)
    background = border.median(dim=1).values
    if int(background.min()) < LIGHT:
        return None
    near = (border.to(torch.int16) - background[:, None]).abs().amax(dim=0) <= TOLERANCE
    if near.float().mean() < PLAIN_SHARE:
        return None
    differs = (levels.to(torch.int16) - background[:, None, None]).abs().amax(dim=0) > TOLERANCE
    rows = (differs.sum(dim=1) > SPECK_SHARE * width).nonzero()
    cols = (differs.sum(dim=0) > SPECK_SHARE * height).nonzero()
    if not len(rows) or not len(cols):
        return None
    return (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1), background


def place_garment(picture: torch.Tensor, source_size_wh: tuple[int, int],
                  target_size_wh: tuple[int, int]) -> torch.Tensor:
    """A garment picture (3, h, w) uint8 showing the whole photo of ``source_size_wh`` (at its size or
    reduced) -> (3, H, W) levels of ``target_size_wh``: placed by VITON's rule, or letterboxed."""
    letterbox = Letterbox(source_size_wh, target_size_wh)
    found = garment_extent(picture)
    if found is None:
        return letterbox.fit_levels(picture, WHITE)
    (x0, y0, x1, y1), background = found
    target_w, target_h = target_size_wh
    box_w = VITON_GARMENT_BOX_WH[0] * target_w / VITON_FRAME_WH[0]
    box_h = VITON_GARMENT_BOX_WH[1] * target_h / VITON_FRAME_WH[1]
    # Where letterboxing alone would put the garment, in VITON's frame pixels.
    picture_w, picture_h = picture.shape[2], picture.shape[1]
    to_source = (source_size_wh[0] / picture_w, source_size_wh[1] / picture_h)
    (lx0, ly0), (lx1, ly1) = letterbox.apply_points([[x0 * to_source[0], y0 * to_source[1]],
                                                    [x1 * to_source[0], y1 * to_source[1]]])
    fits = min(box_w / (lx1 - lx0), box_h / (ly1 - ly0))
    centre_x = (lx0 + lx1) / 2 * VITON_FRAME_WH[0] / target_w
    centre_y = (ly0 + ly1) / 2 * VITON_FRAME_WH[1] / target_h
    if FRAMED_SCALE[0] <= fits <= FRAMED_SCALE[1] and abs(centre_x - VITON_FRAME_WH[0] / 2) <= FRAMED_CENTRE_X \
            and FRAMED_CENTRE_Y[0] <= centre_y <= FRAMED_CENTRE_Y[1]:
        return letterbox.fit_levels(picture, WHITE)
    scale = min(box_w / (x1 - x0), box_h / (y1 - y0))
    size_wh = (max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale)))
    garment = _background_to_white(resize_levels(picture[:, y0:y1, x0:x1], size_wh), background)
    canvas = torch.full((target_h, target_w, 3), 255, dtype=torch.uint8)
    left, top = (target_w - size_wh[0]) // 2, (target_h - size_wh[1]) // 2
    canvas[top:top + size_wh[1], left:left + size_wh[0]] = garment.permute(1, 2, 0)
    return canvas.permute(2, 0, 1)


def _background_to_white(levels: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """The background's colour (within a third of TOLERANCE) to white, fading back to the picture's
    own by TOLERANCE, so the cut's edges do not show on the white it is placed on."""
    distance = (levels.to(torch.int16) - background[:, None, None]).abs().amax(dim=0).to(torch.float32)
    keep = ((distance - TOLERANCE / 3) / (TOLERANCE * 2 / 3)).clamp_(0, 1)
    return (levels.to(torch.float32) * keep + 255 * (1 - keep)).round_().to(torch.uint8)
