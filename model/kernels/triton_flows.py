"""Fused flow composition in Triton: offsets -> grid -> read of the old flow.

``compose_head_flows_triton(flow, block_offsets, heads)`` equals
``compose_flows(flow, heads_to_batch(block_offsets, heads))`` (model.sampling):
for every head k of image b it turns the pixel offsets in channels (2k, 2k+1)
of the flow block's output into a normalised grid and reads the old flow
there (bilinear, border, align_corners=False). The torch version makes the
offsets contiguous, builds the grid tensor and permutes it for grid_sample;
here each output pixel is one read of its two offsets and four reads of the
old flow, straight from the strided block output. Everything is fp32.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_utils import INTERPRETED, bilinear_corners

# Pixels per program on a GPU (the default 4 warps); smaller maps take the next power of 2.
COMPOSE_BLOCK = 256


@triton.jit
def _compose_kernel(flow_ptr, off_ptr, out_ptr, H, W,
                    sf_n, sf_c, sf_h, sf_w,
                    so_b, so_c, so_h, so_w,
                    sr_n, sr_c, sr_h, sr_w,
                    K: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    n = tl.program_id(1).to(tl.int64)
    b = n // K
    k = n % K
    p = pid * BLOCK + tl.arange(0, BLOCK)
    mask = p < H * W
    y = p // W
    x = p % W

    offsets = off_ptr + b * so_b + (2 * k) * so_c + y * so_h + x * so_w
    ox = tl.load(offsets, mask=mask, other=0.0).to(tl.float32)
    oy = tl.load(offsets + so_c, mask=mask, other=0.0).to(tl.float32)
    # offsets_to_flow: the align-corners-true normalisation (docs/architecture.md).
    gx = (x.to(tl.float32) + ox) / ((W - 1.0) * 0.5) - 1.0
    gy = (y.to(tl.float32) + oy) / ((H - 1.0) * 0.5) - 1.0
    x0, x1, y0, y1, wx0, wx1, wy0, wy1 = bilinear_corners(gx, gy, W, H)
    w00 = wx0 * wy0
    w01 = wx1 * wy0
    w10 = wx0 * wy1
    w11 = wx1 * wy1
    for ch in tl.static_range(2):
        src = flow_ptr + n * sf_n + ch * sf_c
        v = tl.load(src + y0 * sf_h + x0 * sf_w, mask=mask, other=0.0).to(tl.float32) * w00
        v += tl.load(src + y0 * sf_h + x1 * sf_w, mask=mask, other=0.0).to(tl.float32) * w01
        v += tl.load(src + y1 * sf_h + x0 * sf_w, mask=mask, other=0.0).to(tl.float32) * w10
        v += tl.load(src + y1 * sf_h + x1 * sf_w, mask=mask, other=0.0).to(tl.float32) * w11
        tl.store(out_ptr + n * sr_n + ch * sr_c + y * sr_h + x * sr_w, v, mask=mask)


def compose_head_flows_triton(flow: torch.Tensor, block_offsets: torch.Tensor, heads: int) -> torch.Tensor:
    """flow (B*K, 2, h, w) fp32, block_offsets (B, 2K, h, w) any float dtype and
    strides (e.g. a channel slice of a conv output) -> new flow (B*K, 2, h, w) fp32."""
    n, two, h, w = flow.shape
    b = block_offsets.shape[0]
    if two != 2 or tuple(block_offsets.shape) != (b, 2 * heads, h, w) or n != b * heads:
        raise ValueError(f"flow {tuple(flow.shape)} and offsets {tuple(block_offsets.shape)} "
                         f"do not fit {heads} heads")
    flow = flow.float()
    out = torch.empty((n, 2, h, w), device=flow.device, dtype=torch.float32)
    if out.numel() == 0:
        return out
    block = min(triton.next_power_of_2(h * w), 4096 if INTERPRETED else COMPOSE_BLOCK)
    grid = (triton.cdiv(h * w, block), n)
    _compose_kernel[grid](*compose_kernel_args(flow, block_offsets, out), K=heads, BLOCK=block)
    return out


def compose_kernel_args(flow: torch.Tensor, block_offsets: torch.Tensor, out: torch.Tensor) -> list:
    """The kernel's runtime arguments in order (also what model.kernels.compile_check
    specialises a compile on)."""
    _, _, h, w = flow.shape
    return [flow, block_offsets, out, h, w, *flow.stride(), *block_offsets.stride(), *out.stride()]
