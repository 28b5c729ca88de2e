"""Geometry policy for a person photo (framing): the model's frame is cut out of the photo around
the person, a crop box of the model's aspect ratio (3:4 as published) that may reach past the
photo's edges, and scaled to the model's size; what lies outside the photo is padded. Where the
box goes is model/person/framing.py's business; this module only cuts, scales and maps points.

The counterpart of ``Letterbox`` (the whole picture fitted in) with the same methods, so the
drawing code takes either frame.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .levels import Picture, image_to_levels, picture_size_wh, resize_levels, tensor_to_image

Box = tuple[int, int, int, int]  # (left, top, right, bottom), as Pillow's
# What VITON, the published model's training data, has around its people: its background's median
# colour (bench/results/viton-framing.json), the padding where a box leaves the photo.
VITON_BACKGROUND = (234, 233, 232)


@dataclass(frozen=True)
class Crop:
    """``box`` (source pixels, of ``target_size_wh``'s aspect ratio; it may reach past the source's
    edges) out of a source of ``source_size_wh``, scaled to ``target_size_wh``."""
    source_size_wh: tuple[int, int]
    box: Box
    target_size_wh: tuple[int, int]

    @classmethod
    def around(cls, source_size_wh: tuple[int, int], centre_xy: tuple[float, float], height: float,
               top_share: float, target_size_wh: tuple[int, int]) -> "Crop":
        """The box ``height`` source pixels high (about: a whole number of the target's aspect units,
        so the box is exactly of its aspect ratio) whose centre line runs through ``centre_xy`` and
        whose top lies ``top_share`` of its height above that point."""
        unit_w, unit_h = _aspect_units(target_size_wh)
        units = max(1, round(height / unit_h))
        width, height = units * unit_w, units * unit_h
        left = round(centre_xy[0] - width / 2)
        top = round(centre_xy[1] - top_share * height)
        return cls(tuple(source_size_wh), (left, top, left + width, top + height), tuple(target_size_wh))

    @classmethod
    def whole(cls, source_size_wh: tuple[int, int]) -> "Crop":
        """The source as it is: a photo already at the model's size is taken as framed."""
        return cls(tuple(source_size_wh), (0, 0, *source_size_wh), tuple(source_size_wh))

    @property
    def identity(self) -> list:
        """What besides the model's inputs decides a restored result (a cache key's part)."""
        return [list(self.source_size_wh), list(self.target_size_wh), list(self.box)]

    @property
    def scale(self) -> float:
        """Target pixels per source pixel."""
        return self.target_size_wh[1] / (self.box[3] - self.box[1])

    @property
    def visible_box(self) -> Box | None:
        """The part of the box inside the source (source pixels); None when none is."""
        left, top, right, bottom = self.box
        width, height = self.source_size_wh
        visible = (max(left, 0), max(top, 0), min(right, width), min(bottom, height))
        return visible if visible[0] < visible[2] and visible[1] < visible[3] else None

    @property
    def content_box(self) -> Box | None:
        """Where the visible part lands in the target (target pixels); None when nothing is visible."""
        visible = self.visible_box
        if visible is None:
            return None
        target_w, target_h = self.target_size_wh
        left, top = self.box[:2]
        x0, y0, x1, y1 = (round((v - o) * self.scale) for v, o in zip(visible, (left, top, left, top)))
        x0, y0 = min(max(x0, 0), target_w - 1), min(max(y0, 0), target_h - 1)
        return x0, y0, min(max(x1, x0 + 1), target_w), min(max(y1, y0 + 1), target_h)

    def apply_points(self, xy: np.ndarray) -> np.ndarray:
        """(N, 2) source pixel coordinates -> target pixel coordinates."""
        return (np.asarray(xy, dtype=np.float64) - self.box[:2]) * self.scale

    def source_box(self, target_box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        """A box in target pixels -> the same box in source pixels."""
        left, top = self.box[:2]
        return tuple(v / self.scale + o for v, o in zip(target_box, (left, top, left, top)))

    def fit_levels(self, picture: Picture, fill=VITON_BACKGROUND) -> torch.Tensor:
        """``picture`` shows the whole source frame (at its size, or scaled: a reduced decoding) ->
        the target as (3, H, W) uint8 levels in pixel order, ``fill`` where the box leaves the source.
        A small visible part is cut out and resized alone; most of the picture is resized whole to
        the box's scale, then cut (one pass over it, as a letterbox's; cutting first copies it again)."""
        target_w, target_h = self.target_size_wh
        canvas = torch.empty((target_h, target_w, 3), dtype=torch.uint8)
        content, visible = self.content_box, self.visible_box
        if content is None:
            canvas[:] = torch.tensor(fill, dtype=torch.uint8)
            return canvas.permute(2, 0, 1)
        x0, y0, x1, y1 = content
        part = _part(picture, visible, self.source_size_wh)
        if part is None:  # most of the picture
            width, height = picture_size_wh(picture)
            scale = self.scale * self.source_size_wh[0] / width  # target pixels per picture pixel
            whole = resize_levels(picture, (max(x1 - x0, round(width * scale)), max(y1 - y0, round(height * scale))))
            left = min(round(visible[0] * self.scale), whole.shape[2] - (x1 - x0))
            top = min(round(visible[1] * self.scale), whole.shape[1] - (y1 - y0))
            part = whole[:, top:top + y1 - y0, left:left + x1 - x0]
        elif picture_size_wh(part) != (x1 - x0, y1 - y0):
            part = resize_levels(part, (x1 - x0, y1 - y0))
        else:
            part = image_to_levels(part) if isinstance(part, Image.Image) else part
        if (x1 - x0, y1 - y0) == (target_w, target_h) and part.permute(1, 2, 0).is_contiguous():
            return part
        if (x1 - x0, y1 - y0) != (target_w, target_h):
            canvas[:] = torch.tensor(fill, dtype=torch.uint8)
        canvas[y0:y1, x0:x1] = part.permute(1, 2, 0)
        return canvas.permute(2, 0, 1)

    def fit(self, img: Image.Image, fill=VITON_BACKGROUND) -> Image.Image:
        return img if self.box == (0, 0, *self.source_size_wh) and img.size == self.target_size_wh \
            else tensor_to_image(self.fit_levels(img, fill))

    def apply(self, img: Image.Image, fill=VITON_BACKGROUND) -> Image.Image:
        """``img`` spans the source frame at any size (a pose map of the photo's frame)."""
        return self.fit(img, fill)

    def restore(self, img: Image.Image, fill=(0, 0, 0)) -> Image.Image:
        """A model-size image back over the source frame at its size: the box's part of the source
        shows ``img`` scaled, the rest is ``fill`` (a pose map's black; a result goes back into its
        photo through ``Composite`` instead)."""
        canvas = Image.new("RGB", self.source_size_wh, fill)
        content, visible = self.content_box, self.visible_box
        if content is not None:
            canvas.paste(img.crop(content).resize((visible[2] - visible[0], visible[3] - visible[1]), Image.BICUBIC),
                         visible[:2])
        return canvas

    def fit_labels(self, labels: Image.Image) -> Image.Image:
        """A label map (mode L) of the source frame through the crop: nearest-neighbour scaling (labels
        stay labels), background (0) where the box leaves the source."""
        canvas = Image.new("L", self.target_size_wh, 0)
        content, visible = self.content_box, self.visible_box
        if content is not None:
            fx, fy = labels.width / self.source_size_wh[0], labels.height / self.source_size_wh[1]
            part = labels.crop((round(visible[0] * fx), round(visible[1] * fy), round(visible[2] * fx),
                                round(visible[3] * fy)))
            canvas.paste(part.resize((content[2] - content[0], content[3] - content[1]), Image.NEAREST), content[:2])
        return canvas


def _aspect_units(size_wh: tuple[int, int]) -> tuple[int, int]:
    """The smallest whole (w, h) of ``size_wh``'s aspect ratio: (3, 4) for 192 x 256."""
    divisor = math.gcd(*size_wh)
    return size_wh[0] // divisor, size_wh[1] // divisor


def _part(picture: Picture, visible: Box, source_size_wh: tuple[int, int]) -> Picture | None:
    """The ``visible`` box (source pixels) of a picture of the whole source frame at any size; None
    when it is most of an image's (better resized whole, then cut)."""
    width, height = picture_size_wh(picture)
    fx, fy = width / source_size_wh[0], height / source_size_wh[1]
    x0, y0 = math.floor(visible[0] * fx), math.floor(visible[1] * fy)
    x1, y1 = max(x0 + 1, math.ceil(visible[2] * fx)), max(y0 + 1, math.ceil(visible[3] * fy))
    if (x0, y0, x1, y1) == (0, 0, width, height):
        return picture
    if not isinstance(picture, Image.Image):
        return picture[:, y0:y1, x0:x1]
    return picture.crop((x0, y0, x1, y1)) if (x1 - x0) * (y1 - y0) < width * height / 2 else None
