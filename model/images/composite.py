"""The model's result back in the person's own photo, at the photo's size: only where the model
dresses the person (the region the masked model blacks out, grown a little and feathered) are the
photo's pixels replaced; everywhere else they are the photo's own, bit for bit.

The cost is the region's, never the photo's: the result's part under the mask is scaled up to
its box in the photo (torch's 8-bit bicubic, as Pillow's), and pasted into a copy of the photo
through the mask scaled up likewise (Pillow's 8-bit blend, exact where the mask is 0 or 255). No
float copy of the photo is made. Before that, the result is shifted by the mean colour difference
between it and the photo just outside the mask, where the model only had to copy the photo: a
model whose colours drift a little leaves no halo at the seam.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from PIL import Image, ImageChops, ImageFilter

from .crop import Box, Crop

# In pixels of a frame 256 high (scaled with the model's height): the region grows by GROW, then
# blurs by FEATHER (Pillow's Gaussian radius) outwards; where the masked model was black it stays whole.
GROW = 3
FEATHER = 2
# The band outside the mask where the colour difference is measured, and the most it may shift by.
RING = 4
MAX_SHIFT = 24


def _scaled(pixels: int, height: int) -> int:
    return max(1, round(pixels * height / 256))


def dilated(found: np.ndarray, by: int) -> np.ndarray:
    """(H, W) bool grown by ``by`` pixels in each direction (a square's dilation, row then column
    shifts: a twentieth of Pillow's MaxFilter's time at the model's size)."""
    grown = found.copy()
    for shift in range(1, by + 1):
        grown[shift:] |= found[:-shift]
        grown[:-shift] |= found[shift:]
    rows = grown.copy()
    for shift in range(1, by + 1):
        grown[:, shift:] |= rows[:, :-shift]
        grown[:, :-shift] |= rows[:, shift:]
    return grown


def feathered_mask(region: Image.Image) -> torch.Tensor:
    """(H, W) uint8 from a mode L region (255 = replaced) at the model's size: grown and feathered."""
    height = region.height
    grown = Image.fromarray(dilated(np.asarray(region) > 127, _scaled(GROW, height)).astype(np.uint8) * 255)
    soft = grown.filter(ImageFilter.GaussianBlur(_scaled(FEATHER, height)))
    return torch.from_numpy(np.array(ImageChops.lighter(region, soft)))


@dataclass(frozen=True, eq=False)
class Composite:
    """Maps a result of the model's frame back into ``photo`` (upright RGB, full size) through ``crop``.
    ``mask``: (H, W) uint8 at the model's size, 255 where the result is used; ``reference``: (3, H, W)
    uint8, the photo as the model saw it (``crop.fit_levels(photo)``); ``photo_id``: what identifies the
    photo's bytes, for a cache key (a caller that has them sets it)."""
    photo: Image.Image
    crop: Crop
    mask: torch.Tensor
    reference: torch.Tensor
    photo_id: str | None = None

    @property
    def source_size_wh(self) -> tuple[int, int]:
        return self.crop.source_size_wh

    @property
    def target_size_wh(self) -> tuple[int, int]:
        return self.crop.target_size_wh

    @property
    def identity(self) -> list:
        """What besides the model's inputs decides a restored result (a cache key's part)."""
        return [list(self.source_size_wh), list(self.target_size_wh), list(self.crop.box), self.photo_id]

    @cached_property
    def _mask_box(self) -> Box | None:
        """The mask's extent in the model's frame; None when it is empty."""
        rows, cols = self.mask.any(dim=1).nonzero(), self.mask.any(dim=0).nonzero()
        if not len(rows):
            return None
        return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1

    @cached_property
    def _ring(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The band outside the mask, within the photo, where the result should be the photo: its
        pixels' rows and columns, and the photo's mean colour there; None when there is none."""
        support = self.mask.numpy() > 0
        ring = dilated(support, _scaled(RING, support.shape[0])) & ~support
        content = self.crop.content_box
        inside = np.zeros_like(ring)
        if content is not None:
            inside[content[1]:content[3], content[0]:content[2]] = True
        where = np.nonzero(ring & inside)
        if not len(where[0]):
            return None
        return where, self.reference.numpy()[:, where[0], where[1]].mean(axis=1)

    def colour_shift(self, levels: torch.Tensor) -> torch.Tensor:
        """(3,) int16: what to add to the result so that it meets the photo's colours at the seam."""
        if self._ring is None:
            return torch.zeros(3, dtype=torch.int16)
        (rows, cols), photo_mean = self._ring
        difference = photo_mean - levels.numpy()[:, rows, cols].mean(axis=1)
        return torch.from_numpy(difference).round().clamp(-MAX_SHIFT, MAX_SHIFT).to(torch.int16)

    def photo_box(self) -> Box | None:
        """The mask's extent in the photo (photo pixels, inside it); None when nothing is replaced."""
        if self._mask_box is None:
            return None
        x0, y0, x1, y1 = self.crop.source_box(self._mask_box)
        width, height = self.source_size_wh
        box = (max(0, math.floor(x0)), max(0, math.floor(y0)), min(width, math.ceil(x1)), min(height, math.ceil(y1)))
        return box if box[0] < box[2] and box[1] < box[3] else None

    def photo_mask(self) -> Image.Image:
        """The mask at the photo's size (mode L): where ``restore`` may change a pixel."""
        canvas = Image.new("L", self.source_size_wh, 0)
        box = self.photo_box()
        if box is not None:
            canvas.paste(Image.fromarray(self._scaled_up(self.mask[None], box)[0].numpy()), box[:2])
        return canvas

    def restore(self, img: Image.Image) -> Image.Image:
        """The photo with ``img`` (the model's result, 8-bit RGB at the model's size) under the mask."""
        result = self.photo.copy()
        box = self.photo_box()
        if box is None:
            return result
        levels = torch.from_numpy(np.array(img)).permute(2, 0, 1)
        # The result and the mask as one RGBA picture: one scaling in torch's 4-channel 8-bit path (the
        # 1-channel one takes three times as long), and Pillow takes it as it is, its alpha the mask.
        rgba = torch.empty((levels.shape[1], levels.shape[2], 4), dtype=torch.uint8).permute(2, 0, 1)
        rgba[:3] = (levels.to(torch.int16) + self.colour_shift(levels)[:, None, None]).clamp_(0, 255)
        rgba[3] = self.mask
        garment = Image.fromarray(self._scaled_up(rgba, box).permute(1, 2, 0).numpy(), "RGBA")
        result.paste(garment, box[:2], garment)
        return result

    def _scaled_up(self, levels: torch.Tensor, box: Box) -> torch.Tensor:
        """(C, h, w) uint8 of the model's frame -> its part over ``box`` (photo pixels) at the photo's
        scale: Pillow's bicubic (a = -0.5) by torch's 8-bit kernel, on the part's rows and columns only."""
        scale = self.crop.scale
        left, top = self.crop.box[:2]
        # The model-frame pixels that ``box`` covers, with 2 on each side for the bicubic's support.
        fx0, fy0 = (box[0] - left) * scale, (box[1] - top) * scale
        fx1, fy1 = (box[2] - left) * scale, (box[3] - top) * scale
        height, width = levels.shape[1:]
        mx0, my0 = max(0, math.floor(fx0) - 2), max(0, math.floor(fy0) - 2)
        mx1, my1 = min(width, math.ceil(fx1) + 2), min(height, math.ceil(fy1) + 2)
        part = levels[:, my0:my1, mx0:mx1]
        # At the photo's scale over the whole part; then the box's pixels are cut out of it.
        ox, oy = round((fx0 - mx0) / scale), round((fy0 - my0) / scale)
        box_w, box_h = box[2] - box[0], box[3] - box[1]
        out_w, out_h = max(round((mx1 - mx0) / scale), ox + box_w), max(round((my1 - my0) / scale), oy + box_h)
        out = torch.empty((out_h, out_w, levels.shape[0]), dtype=torch.uint8).permute(2, 0, 1)
        torch._C._nn._upsample_bicubic2d_aa(part[None], [out_h, out_w], False, None, None, out=out[None])
        return out[:, oy:oy + box_h, ox:ox + box_w]

