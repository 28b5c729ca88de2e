"""The precision policy: which modes exist, what each runs in on which device, how the
network is prepared for one, and the start-up check that falls back from a half mode
whose output is too far from fp32's (docs/gpu.md, "Engine precision modes").

A mode's convolutions run in its dtype, BatchNorm keeps fp32 parameters, and the flows,
the softmax of the attention and the sampling accumulation stay fp32 in every mode
(model.network, model.kernels). "auto" is AUTO_GPU_PRECISION on a GPU and fp32 on the
CPU; tf32 means fp32 on the CPU and fp16 means bf16 there (logged).
"""
from __future__ import annotations

import logging
from typing import Callable

import torch
from torch import nn

from .images import psnr_8bit
from .network import DAFlow

# The engine's lines: a precision is chosen when an engine is built.
log = logging.getLogger("model.engine")

PRECISIONS = ("fp32", "tf32", "bf16", "fp16", "auto")
# The reduced-precision mode "auto" means on a GPU; chosen from bench/results/accuracy-*.json
# (PSNR of the 8-bit output against fp32 on the golden inputs, >= 40 dB required).
AUTO_GPU_PRECISION = "fp16"
DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CPU_FALLBACK = {"tf32": "fp32", "fp16": "bf16", "auto": "fp32"}
HALF_PRECISIONS = ("bf16", "fp16")
# What a half mode falls back to, in order, when its output on the check inputs is
# non-finite or further than its MIN_PSNR_DB from fp32.
PRECISION_FALLBACKS = {"fp16": ("bf16", "fp32"), "bf16": ("fp32",)}
# Each half mode's bar, below what docs/gpu.md measures it at on the golden inputs
# (bench/results/accuracy-cpu.json): fp16 51.9-53.0 dB, bf16 34.6-36.2 dB (its 8-bit
# mantissa). One bar for both (40 dB) made an fp16 overflow skip bf16, which can never
# reach 40, straight to fp32.
MIN_PSNR_DB = {"fp16": 40.0, "bf16": 32.0}


def effective_precision(precision: str, device: torch.device) -> str:
    """The mode actually run: "auto" resolved, CPU-unsupported modes degraded."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    if device.type == "cuda":
        return AUTO_GPU_PRECISION if precision == "auto" else precision
    chosen = CPU_FALLBACK.get(precision, precision)
    if chosen != precision and precision != "auto":
        log.warning("precision %s is not run on the CPU; using %s", precision, chosen)
    return chosen


def set_cuda_math(precision: str, cudnn_benchmark: bool) -> None:
    """TF32 only in the tf32 mode (so fp32 means IEEE fp32); with ``cudnn_benchmark`` cuDNN
    picks the fastest convolution algorithm per shape (the engine's shapes are fixed), which
    may differ between batch sizes: the GPU tests pass False (EngineConfig.cudnn_benchmark)."""
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = cudnn_benchmark


def default_channels_last(device: torch.device, precision: str) -> bool:
    """Channels-last on a CPU (oneDNN's convolutions take it as is, and the Numba sampler
    reads it without a copy: 9-14% faster at 256x192) and on a GPU in the half modes
    (tensor cores)."""
    return device.type != "cuda" or precision in HALF_PRECISIONS


def prepare_network(net: DAFlow, device: torch.device, precision: str, channels_last: bool = False) -> DAFlow:
    """Moves the network to device and its convolutions to the precision's dtype.
    BatchNorm keeps its fp32 parameters and statistics (it normalises half
    inputs in fp32); the flows never pass through a parameter."""
    net = net.to(device=device)
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            module.to(DTYPES[precision])
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net.eval()


def run_in_precision(net: DAFlow, inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor], precision: str,
                     device: torch.device, cudnn_benchmark: bool = False) -> torch.Tensor:
    """``net`` prepared as the engine prepares it for ``precision`` (net itself is moved
    and cast: pass a copy to keep it), run once on (pose, masked_model, cloth)
    (N, 3, H, W) in [-1, 1] -> (N, 3, H, W) float32 CPU output (one run: cuDNN's search only
    with ``cudnn_benchmark``)."""
    channels_last = default_channels_last(device, precision)
    if device.type == "cuda":
        set_cuda_math(precision, cudnn_benchmark)
    net = prepare_network(net, device, precision, channels_last)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    pose, masked, cloth = (t.to(device, DTYPES[precision]).contiguous(memory_format=layout) for t in inputs)
    with torch.inference_mode():
        return net(torch.cat((pose, masked), dim=1), cloth, masked).float().cpu()


def choose_precision(precision: str, run: Callable[[str], torch.Tensor],
                     min_psnr_db: dict[str, float] = MIN_PSNR_DB) -> tuple[str, list[str]]:
    """The first of ``precision`` and its fallbacks whose output (``run(mode)``) is finite
    and at least its own ``min_psnr_db[mode]`` from fp32's, and why each one before it was
    refused."""
    if precision not in PRECISION_FALLBACKS:
        return precision, []
    chain = (precision, *PRECISION_FALLBACKS[precision])
    reference = run("fp32")
    refused = []
    for mode in chain[:-1]:
        out = run(mode)
        if not torch.isfinite(out).all():
            refused.append(f"{mode}: non-finite output")
            continue
        db = psnr_8bit(out, reference)
        if db < min_psnr_db[mode]:
            refused.append(f"{mode}: {db:.1f} dB against fp32 (< {min_psnr_db[mode]:g})")
            continue
        return mode, refused
    return chain[-1], refused
