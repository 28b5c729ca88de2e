"""Fused deformable attention sampling in Triton (the GPU fast path).

``deformable_sample_triton(features, flows, weights)`` computes, in one pass,
``out[b] = sum_k weights[b, k] * grid_sample(features[b], flows[b*K + k])``
with bilinear interpolation, ``align_corners=False`` and border padding
(docs/architecture.md, "Sampling conventions"). Each program owns a block of
output pixels and a block of channels of one image: it reads the K flows and
weights of its pixels once, gathers the four neighbours of every head,
accumulates in fp32 and writes the result once. There is no K-fold copy of
the features and no (B, K, C, H, W) intermediate.

Features may be fp32, fp16 or bf16 in any dense layout (NCHW or channels-
last: strides are passed through); flows and weights are read as fp32 and
the output has the features' dtype and layout.

Importing this module imports Triton; the dispatch in ``model.kernels``
imports it lazily. Set ``TRITON_INTERPRET=1`` before Triton is imported to
run the kernels on CPU tensors (tests do, in a subprocess).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_utils import INTERPRETED, bilinear_corners

FEATURE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _deformable_sample_kernel(
        feat_ptr, flow_ptr, weight_ptr, out_ptr,
        C, H, W,
        sf_b, sf_c, sf_h, sf_w,
        sg_n, sg_c, sg_h, sg_w,
        sa_b, sa_k, sa_h, sa_w,
        so_b, so_c, so_h, so_w,
        K: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)

    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    p_mask = p < H * W
    y = p // W
    x = p % W
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (c < C)[:, None] & p_mask[None, :]

    # One image's base pointer and 32-bit offsets within it (check_sampling_inputs keeps an
    # image under 2**31 elements): a tile of 64-bit pointers per corner would double the
    # registers the addresses take.
    feat = feat_ptr + b * sf_b
    channel = (c * sf_c)[:, None]
    acc = tl.zeros((BLOCK_C, BLOCK_P), dtype=tl.float32)
    # A runtime loop over the heads, not tl.static_range: unrolled, the six heads'
    # addresses and factors stay live together and ptxas spilled every NCHW variant on
    # sm_89/sm_90 (255 registers, 32-528 bytes); the loop needs about 150 and no spill
    # (bench/results/kernel_resources.json, tests/model/kernels/test_compile_check.py).
    for k in range(K):
        flow = flow_ptr + (b * K + k) * sg_n + y * sg_h + x * sg_w
        gx = tl.load(flow, mask=p_mask, other=0.0).to(tl.float32)
        gy = tl.load(flow + sg_c, mask=p_mask, other=0.0).to(tl.float32)
        a = tl.load(weight_ptr + b * sa_b + k * sa_k + y * sa_h + x * sa_w,
                    mask=p_mask, other=0.0).to(tl.float32)
        x0, x1, y0, y1, wx0, wx1, wy0, wy1 = bilinear_corners(gx, gy, W, H)
        ay0 = a * wy0
        ay1 = a * wy1
        row0 = y0 * sf_h
        row1 = y1 * sf_h
        col0 = x0 * sf_w
        col1 = x1 * sf_w
        v = tl.load(feat + (channel + (row0 + col0)[None, :]), mask=mask, other=0.0).to(tl.float32)
        acc += v * (wx0 * ay0)[None, :]
        v = tl.load(feat + (channel + (row0 + col1)[None, :]), mask=mask, other=0.0).to(tl.float32)
        acc += v * (wx1 * ay0)[None, :]
        v = tl.load(feat + (channel + (row1 + col0)[None, :]), mask=mask, other=0.0).to(tl.float32)
        acc += v * (wx0 * ay1)[None, :]
        v = tl.load(feat + (channel + (row1 + col1)[None, :]), mask=mask, other=0.0).to(tl.float32)
        acc += v * (wx1 * ay1)[None, :]

    out = out_ptr + b * so_b + (c * so_c)[:, None] + (y * so_h + x * so_w)[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask)


# Candidate tilings, tried once per (C, H, W, layout) on the GPU at warm-up; every one is
# compiled for sm_80/89/90 and checked free of spills by tests/model/kernels/test_compile_check.py.
# The 128x32 tile runs on 4 warps: on 8, ptxas (sm_90) held the half-precision
# channels-last variants to 64 registers and spilled.
SAMPLE_CONFIGS = tuple(triton.Config({"BLOCK_P": p, "BLOCK_C": c}, num_warps=w)
                       for p, c, w in ((64, 32, 4), (128, 16, 4), (32, 64, 4), (128, 32, 4), (256, 8, 4),
                                       (16, 64, 2)))
LAYOUTS = ("nchw", "channels_last")
# Tiles (BLOCK_P, BLOCK_C) that a Triton older than 3.9 spills in NCHW: under Triton 3.6
# (torch 2.11's) ptxas gave the 64x32 and 32x64 NCHW variants 255 registers and 8-64 bytes of
# stack on sm_80 and sm_90 (10 variants; tests/model/kernels/test_compile_check.py under `make test-lowest-torch`);
# Triton 3.9 compiles all of them without a spill. 3.7 and 3.8 were not measured: treated as 3.6.
SPILLING_NCHW_TILES_BEFORE_3_9 = ((64, 32), (32, 64))


def triton_version() -> tuple[int, int]:
    return tuple(int(part) for part in triton.__version__.split(".")[:2])


def sample_configs(layout: str, version: tuple[int, int] | None = None) -> tuple:
    """The autotune candidates for features in ``layout`` under Triton ``version`` (this one's by
    default): every SAMPLE_CONFIGS entry that compiles there without a spill. The compile check
    compiles exactly these, per layout and version."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
    version = version or triton_version()
    if layout == "channels_last" or version >= (3, 9):
        return SAMPLE_CONFIGS
    return tuple(c for c in SAMPLE_CONFIGS
                 if (c.kwargs["BLOCK_P"], c.kwargs["BLOCK_C"]) not in SPILLING_NCHW_TILES_BEFORE_3_9)


def feature_layout(channel_stride: int) -> str:
    """The layout a launch's features have: channels-last is the one with unit channel stride."""
    return "channels_last" if channel_stride == 1 else "nchw"


def _prune_configs(configs, named_args, **kwargs):
    """The autotuner's early prune: only this layout's candidates under this Triton."""
    allowed = sample_configs(feature_layout(named_args["sf_c"]))
    return [c for c in configs if c in allowed]


_tuned_sample_kernel = None


def _launcher(channels: int, pixels: int):
    """The autotuned kernel on a real GPU. Under the interpreter, one large tile:
    each program costs Python overhead, so fewer, bigger programs run far
    faster, and autotuning would only multiply the slow runs."""
    global _tuned_sample_kernel
    if INTERPRETED:
        return _deformable_sample_kernel, {"BLOCK_P": min(triton.next_power_of_2(pixels), 1024),
                                           "BLOCK_C": min(triton.next_power_of_2(channels), 64)}
    if _tuned_sample_kernel is None:
        _tuned_sample_kernel = triton.autotune(
            configs=list(SAMPLE_CONFIGS), key=["C", "H", "W", "K", "sf_c", "sf_w"],
            prune_configs_by={"early_config_prune": _prune_configs})(_deformable_sample_kernel)
    return _tuned_sample_kernel, {}


def check_sampling_inputs(features: torch.Tensor, flows: torch.Tensor, weights: torch.Tensor) -> int:
    """Validates shapes, devices and dtypes; returns K."""
    if features.dim() != 4 or flows.dim() != 4 or weights.dim() != 4:
        raise ValueError("features, flows and weights must all be 4-D")
    b, _, h, w = features.shape
    k = weights.shape[1]
    if tuple(weights.shape) != (b, k, h, w):
        raise ValueError(f"weights {tuple(weights.shape)} do not fit features {tuple(features.shape)}")
    if tuple(flows.shape) != (b * k, 2, h, w):
        raise ValueError(f"flows {tuple(flows.shape)} must be {(b * k, 2, h, w)}")
    if sum((n - 1) * s for n, s in zip(features.shape[1:], features.stride()[1:])) >= 2**31:
        raise ValueError(f"features {tuple(features.shape)}: one image must stay under 2**31 elements "
                         "(the kernel's offsets within an image are 32-bit)")
    if features.dtype not in FEATURE_DTYPES:
        raise TypeError(f"features dtype {features.dtype} not supported; use one of {FEATURE_DTYPES}")
    if not (features.device == flows.device == weights.device):
        raise ValueError("features, flows and weights must be on one device")
    return k


def deformable_sample_triton(features: torch.Tensor, flows: torch.Tensor,
                             weights: torch.Tensor) -> torch.Tensor:
    """The fused sampling; out has features' shape, dtype and memory layout."""
    k = check_sampling_inputs(features, flows, weights)
    flows = flows.float()
    weights = weights.float()
    b, c, h, w = features.shape
    out = torch.empty_like(features)
    if out.numel() == 0:
        return out
    kernel, fixed = _launcher(c, h * w)

    def grid(meta):
        return triton.cdiv(h * w, meta["BLOCK_P"]), triton.cdiv(c, meta["BLOCK_C"]), b

    kernel[grid](*sample_kernel_args(features, flows, weights, out), K=k, **fixed)
    return out


def sample_kernel_args(features: torch.Tensor, flows: torch.Tensor, weights: torch.Tensor,
                       out: torch.Tensor) -> list:
    """The kernel's runtime arguments in order (also what model.kernels.compile_check
    specialises a compile on)."""
    _, c, h, w = features.shape
    return [features, flows, weights, out, c, h, w,
            *features.stride(), *flows.stride(), *weights.stride(), *out.stride()]
