"""Pixels as the network and the service hold them: 8-bit RGB images, their (3, H, W) uint8
levels in pixel order, and the network's float32 values in [-1, 1]; and the bicubic resize
between sizes."""
from __future__ import annotations

from typing import Union

import numpy as np
import torch
from PIL import Image

WHITE = (255, 255, 255)
BLACK = (0, 0, 0)


def image_to_levels(img: Image.Image) -> torch.Tensor:
    """8-bit RGB -> (3, H, W) uint8 levels, a channels-last view of one copy of the pixels
    (the batch stacks into the layout the engine runs, and nothing is transposed here)."""
    return torch.from_numpy(np.array(img if img.mode == "RGB" else img.convert("RGB"))).permute(2, 0, 1)


def stack_levels(levels: list[torch.Tensor]) -> torch.Tensor:
    """(3, H, W) levels -> an (N, 3, H, W) batch in pixel order, as they are: a copy of each
    image's bytes (torch.stack of channels-last views would transpose each into NCHW, twelve
    times slower at 256x192; the engine lays the batch out as it runs anyway)."""
    return torch.stack([t.permute(1, 2, 0) for t in levels]).permute(0, 3, 1, 2)


# A decoded picture: an 8-bit RGB image, or its (3, H, W) uint8 levels.
Picture = Union[Image.Image, torch.Tensor]


def picture_size_wh(picture: Picture) -> tuple[int, int]:
    return picture.size if isinstance(picture, Image.Image) else (picture.shape[2], picture.shape[1])


def picture_levels(picture: Picture) -> torch.Tensor:
    return image_to_levels(picture) if isinstance(picture, Image.Image) else picture


def resize_levels(picture: Picture, size_wh: tuple[int, int]) -> torch.Tensor:
    """Pillow's bicubic resize (antialiased, a = -0.5) as (3, H, W) uint8 levels in pixel order.
    Shrinking, it runs as torch's 8-bit kernel, vectorised where Pillow's is not: six times
    faster, and within one level of Pillow but for a few pixels in a thousand where the filter
    overshoots the 8-bit range (tests/model/images/test_decode.py). Growing stays with Pillow."""
    width, height = picture_size_wh(picture)
    if size_wh[0] > width or size_wh[1] > height:
        image = picture if isinstance(picture, Image.Image) else tensor_to_image(picture)
        return image_to_levels(image.resize(size_wh, Image.BICUBIC))
    # interpolate(mode="bicubic", antialias=True) itself, into a pixel-order tensor: interpolate
    # answers a planar one, which a copy would have to transpose (half the resize's time again).
    resized = torch.empty((size_wh[1], size_wh[0], 3), dtype=torch.uint8).permute(2, 0, 1)
    torch._C._nn._upsample_bicubic2d_aa(picture_levels(picture)[None], [size_wh[1], size_wh[0]], False, None, None,
                                        out=resized[None])
    return resized


def resize_bicubic(img: Image.Image, size_wh: tuple[int, int]) -> Image.Image:
    """``resize_levels`` as an image."""
    return tensor_to_image(resize_levels(img, size_wh))



# The network's value of each 8-bit level, x / 127.5 - 1 as two IEEE fp32 operations (the
# division, then the subtraction, each rounded once), computed once on the CPU. A table, not
# arithmetic where the batch is: CUDA divides by a Python scalar as a multiplication by its
# reciprocal, which puts 111 of the 256 levels one ulp away (tests/model/images/test_levels.py); a gather is
# exact on every device, inside a CUDA graph too.
LEVEL_VALUES = torch.arange(256, dtype=torch.float32).div_(127.5).sub_(1.0)
# What quantisation scales by after the +1 shift: exact in fp32, a multiplication on every device.
LEVEL_SCALE = 127.5
_level_tables: dict[torch.device, torch.Tensor] = {}


def level_table(device: torch.device) -> torch.Tensor:
    """LEVEL_VALUES on ``device``, copied there once (before a CUDA graph captures a read of it)."""
    device = torch.device(device)
    table = _level_tables.get(device)
    if table is None:
        table = _level_tables[device] = LEVEL_VALUES.to(device)
    return table


def levels_to_tensor(levels: torch.Tensor) -> torch.Tensor:
    """8-bit levels (..., 3, H, W) uint8 -> the network's float32 in [-1, 1]: LEVEL_VALUES
    gathered on the levels' device (the engine converts a batch where it runs), the same
    numbers on every device. The result has the levels' shape, dense in the order of their
    strides."""
    return level_table(levels.device)[levels.to(torch.int32)]


def tensor_to_levels(t: torch.Tensor) -> torch.Tensor:
    """Network values (..., 3, H, W) -> uint8 levels: clamp to [-1, 1], (y + 1) * 127.5, rounded
    half to even; inverts levels_to_tensor exactly. An add, a multiplication by an exact
    constant and a rounding, each IEEE on every device (never a division): the same levels
    on the CPU and on a GPU, inside a CUDA graph too."""
    return t.to(torch.float32).clamp(-1.0, 1.0).add_(1.0).mul_(LEVEL_SCALE).round_().to(torch.uint8)


def as_levels(t: torch.Tensor) -> torch.Tensor:
    """Levels as they are; network values quantised."""
    return t if t.dtype == torch.uint8 else tensor_to_levels(t)


def image_to_tensor(img: Image.Image) -> torch.Tensor:
    """8-bit RGB -> (3, H, W) float32 in [-1, 1], as x / 127.5 - 1."""
    return levels_to_tensor(image_to_levels(img)).contiguous()


def tensor_to_image(t: torch.Tensor) -> Image.Image:
    """(3, H, W) network output (or its uint8 levels) -> 8-bit RGB."""
    return Image.fromarray(as_levels(t.detach().cpu()).permute(1, 2, 0).contiguous().numpy())
