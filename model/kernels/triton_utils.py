"""Shared pieces of the Triton kernels (model.kernels.triton_sampling, triton_flows).

``INTERPRETED``: Triton runs the kernels on CPU tensors in its interpreter
(``TRITON_INTERPRET=1``, read once when Triton is first imported; the tests
set it without a GPU). ``bilinear_corners``: grid_sample's source pixel
arithmetic, used by every kernel that reads a map at a flow.
"""
from __future__ import annotations

import os

import triton
import triton.language as tl

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def bilinear_corners(gx, gy, W, H):
    """Source pixel of a normalised (gx, gy) as grid_sample computes it with
    align_corners=False and border padding: the top-left corner, its clamped
    right/bottom neighbour and the four interpolation weights' factors."""
    ix = ((gx + 1.0) * W - 1.0) * 0.5
    iy = ((gy + 1.0) * H - 1.0) * 0.5
    ix = tl.minimum(tl.maximum(ix, 0.0), W - 1.0)
    iy = tl.minimum(tl.maximum(iy, 0.0), H - 1.0)
    x0f = tl.floor(ix)
    y0f = tl.floor(iy)
    # Same factor formulas as ATen's grid sampler (east weight = x - x0,
    # west weight = (x0 + 1) - x), so rounding matches the reference.
    wx1 = ix - x0f
    wx0 = (x0f + 1.0) - ix
    wy1 = iy - y0f
    wy0 = (y0f + 1.0) - iy
    x0 = x0f.to(tl.int32)
    y0 = y0f.to(tl.int32)
    # After the border clamp the far neighbour only leaves the image when its
    # weight is exactly zero, so clamping it reads a valid pixel at weight 0.
    x1 = tl.minimum(x0 + 1, W - 1)
    y1 = tl.minimum(y0 + 1, H - 1)
    return x0, x1, y0, y1, wx0, wx1, wy0, wy1
