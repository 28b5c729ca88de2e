"""Does a fused implementation give the reference's numbers on this device?

The engine runs ``check_fused(impl, device, dtype, channels_last, channels)`` once
at warm-up: each kernel that ``impl`` fuses (the deformable sampling; with "triton"
also the flow composition) on a small batch against the torch reference on the
CPU, in the variant that will serve: the engine's dtype and layout, and the
network's channel counts (a Triton kernel is specialised, and autotuned, on them).
A compile error, a launch error, a non-finite value or a difference beyond the
tested bound is returned as a reason, and the engine serves with the reference
instead; the engine tells a sticky device error apart (model.device_errors.DeviceFailed).

The bounds are the kernel tests' (tests/model/kernels/test_triton_sampling.py, test_kernels_cpu.py):
``sampling_bound`` and ``composition_bound``.
"""
from __future__ import annotations

import torch

from ..sampling import deformable_sample_reference
from . import deformable_sample
from .flows import compose_head_flows, compose_head_flows_reference

REFERENCE = "torch"
# fp32 sums of a few bilinear reads differ from grid_sample's by rounding only.
SAMPLING_FP32_ATOL = 1e-5
# The check's case: K heads as in the network, an odd map; C is each channel count asked for.
CHECK_SHAPE = (2, 6, 16, 13, 11)  # B, K, C, H, W


def sampling_bound(dtype: torch.dtype, reference: torch.Tensor) -> float:
    """fp32: rounding only. fp16/bf16 features: the fp32 sum rounded once to the
    dtype, half an ulp of the largest value, with slack (one eps)."""
    if dtype == torch.float32:
        return SAMPLING_FP32_ATOL
    return torch.finfo(dtype).eps * reference.abs().max().item()


def composition_bound(flow: torch.Tensor, height: int, width: int) -> float:
    """The Triton kernel divides with div.full.f32 (up to 2 ulp): a grid coordinate
    off by ~2 eps * |g| moves the read by that times size/2 pixels, and the flow
    changes by at most 2 max|flow| per pixel; 1e-5 where that is smaller."""
    eps = torch.finfo(torch.float32).eps
    return max(SAMPLING_FP32_ATOL, 4 * eps * max(height, width) * 2 * flow.abs().max().item())


def _case(dtype: torch.dtype, channels: int, channels_last: bool):
    """Features and a flow block's output in the serving dtype and layout (as the network
    hands them to the kernels), flows and softmax weights in fp32."""
    gen = torch.Generator().manual_seed(0)
    b, k, _, h, w = CHECK_SHAPE
    layout = torch.channels_last if channels_last else torch.contiguous_format
    features = torch.randn(b, channels, h, w, generator=gen).to(dtype).contiguous(memory_format=layout)
    flows = torch.randn(b * k, 2, h, w, generator=gen) * 1.5  # past the border too
    weights = torch.softmax(torch.randn(b, k, h, w, generator=gen) * 3, dim=1).contiguous(memory_format=layout)
    block_output = (torch.randn(b, 3 * k, h, w, generator=gen) * max(h, w)).to(dtype).contiguous(memory_format=layout)
    return features, flows, weights, block_output


def _compare(name: str, ours: torch.Tensor, reference: torch.Tensor, bound: float) -> str | None:
    ours = ours.float().cpu()
    if ours.shape != reference.shape:
        return f"{name}: shape {tuple(ours.shape)}, expected {tuple(reference.shape)}"
    if not torch.isfinite(ours).all():
        return f"{name}: non-finite output"
    error = (ours - reference).abs().max().item()
    if not error <= bound:
        return f"{name}: max abs difference {error:.3g} from the reference, bound {bound:.3g}"
    return None


def check_fused(impl: str, device: torch.device, dtype: torch.dtype = torch.float32, channels_last: bool = False,
                channels: tuple[int, ...] = (CHECK_SHAPE[2],)) -> str | None:
    """None when ``impl`` agrees with the reference on ``device`` with ``dtype`` features in
    the given layout, at each of ``channels``; otherwise what went wrong, in one line."""
    if impl == REFERENCE:
        return None
    k = CHECK_SHAPE[1]
    for c in channels:
        features, flows, weights, block_output = _case(dtype, c, channels_last)
        h, w = features.shape[-2:]
        expected = deformable_sample_reference(features.float(), flows, weights)
        expected_flows = compose_head_flows_reference(flows, block_output[:, :2 * k], k)
        try:
            sampled = deformable_sample(features.to(device), flows.to(device), weights.to(device), impl=impl)
            composed = compose_head_flows(flows.to(device), block_output.to(device)[:, :2 * k], k, impl=impl)
            if device.type == "cuda":
                torch.cuda.synchronize(device)  # a launch error surfaces here, not at the next batch
        except Exception as exc:  # noqa: BLE001 - the engine tells a broken device from a broken kernel
            return f"{impl} sampler failed: {type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}"
        reason = (_compare(f"{impl} sampling ({c} channels)", sampled, expected, sampling_bound(dtype, expected))
                  or _compare(f"{impl} flow composition", composed, expected_flows, composition_bound(flows, h, w)))
        if reason is not None:
            return reason
    return None
