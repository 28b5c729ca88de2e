"""Geometry policy (letterboxing): the network wants H x W (256 x 192 as
published). An input of another size or aspect ratio is scaled, keeping its
aspect ratio, until it fits inside H x W, and centred on a canvas of the
model's size. The person is never stretched. The pad colour is what the
training data has around a person: white for photos (masked model, cloth),
black for the pose map (OpenPose canvases are black). The masked model and
the pose map are drawn in the same frame, so they get the same transform;
the result can be returned at model size or mapped back (cropped and
scaled) to the person image's original size.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .levels import WHITE, Picture, picture_levels, picture_size_wh, resize_bicubic, resize_levels, tensor_to_image


@dataclass(frozen=True)
class Letterbox:
    """Fits a source of ``source_size_wh`` into ``target_size_wh``."""
    source_size_wh: tuple[int, int]
    target_size_wh: tuple[int, int]

    @property
    def scale(self) -> float:
        return min(self.target_size_wh[0] / self.source_size_wh[0], self.target_size_wh[1] / self.source_size_wh[1])

    @property
    def identity(self) -> list:
        """What besides the model's inputs decides a restored result (a cache key's part)."""
        return [list(self.source_size_wh), list(self.target_size_wh)]

    @property
    def content_box(self) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the source inside the target."""
        w = max(1, round(self.source_size_wh[0] * self.scale))
        h = max(1, round(self.source_size_wh[1] * self.scale))
        left = (self.target_size_wh[0] - w) // 2
        top = (self.target_size_wh[1] - h) // 2
        return left, top, left + w, top + h

    def apply(self, img: Image.Image, fill=WHITE) -> Image.Image:
        """``img`` of another size than the source is first scaled to it (a pose map of the same frame)."""
        if img.size != self.source_size_wh:
            img = resize_bicubic(img, self.source_size_wh)
        return self.fit(img, fill)

    def fit(self, img: Image.Image, fill=WHITE) -> Image.Image:
        """``img`` shows the whole source frame at any resolution (``decode_to_fit``): one resize
        into the content box; the same as ``apply`` for an image of the source's size."""
        if img.size == self.target_size_wh:
            return img
        return tensor_to_image(self.fit_levels(img, fill))

    def fit_levels(self, picture: Picture, fill=WHITE) -> torch.Tensor:
        """``fit`` as (3, H, W) uint8 levels in pixel order, with no image in between (each
        conversion of Pillow's 4-byte pixels costs as much as a resize's last step)."""
        left, top, right, bottom = self.content_box
        if picture_size_wh(picture) == (right - left, bottom - top):
            content = picture_levels(picture)
        else:
            content = resize_levels(picture, (right - left, bottom - top))
        if content.shape[1:] == (self.target_size_wh[1], self.target_size_wh[0]) \
                and content.permute(1, 2, 0).is_contiguous():
            return content
        canvas = torch.empty((self.target_size_wh[1], self.target_size_wh[0], 3), dtype=torch.uint8)
        if content.shape[1:] != canvas.shape[:2]:
            canvas[:] = torch.tensor(fill, dtype=torch.uint8)
        canvas[top:bottom, left:right] = content.permute(1, 2, 0)
        return canvas.permute(2, 0, 1)

    def apply_points(self, xy: np.ndarray) -> np.ndarray:
        """Maps (N, 2) pixel coordinates of the source frame into the target frame."""
        left, top, right, bottom = self.content_box
        sx = (right - left) / self.source_size_wh[0]
        sy = (bottom - top) / self.source_size_wh[1]
        return np.asarray(xy, dtype=np.float64) * [sx, sy] + [left, top]

    def fit_labels(self, labels: Image.Image) -> Image.Image:
        """A label map (mode L) of the source frame through the letterbox: nearest-neighbour scaling
        (labels stay labels) and background (0) padding."""
        left, top, right, bottom = self.content_box
        if (right - left, bottom - top) == self.target_size_wh:
            return labels.resize(self.target_size_wh, Image.NEAREST)
        canvas = Image.new("L", self.target_size_wh, 0)
        canvas.paste(labels.resize((right - left, bottom - top), Image.NEAREST), (left, top))
        return canvas

    def restore(self, img: Image.Image) -> Image.Image:
        """A model-size image back to the source frame and size."""
        if self.source_size_wh == self.target_size_wh:
            return img
        return img.crop(self.content_box).resize(self.source_size_wh, Image.BICUBIC)
