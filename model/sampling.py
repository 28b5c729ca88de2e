"""Flows, grids and the reference deformable attention sampling.

Conventions (docs/architecture.md, "Sampling conventions"): offsets are pixel
offsets, channel 0 along x; they become grids with the align-corners-*true*
normalisation, yet every sampling uses ``align_corners=False`` with border
padding. The mismatch is part of the trained model and is kept on purpose.
A flow is such a grid kept channel-first, (N, 2, h, w).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _sample(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Bilinear, border-padded, align_corners=False read of ``x`` at ``flow``."""
    return F.grid_sample(x, flow.permute(0, 2, 3, 1), mode="bilinear",
                         padding_mode="border", align_corners=False)


def offsets_to_flow(offsets: torch.Tensor) -> torch.Tensor:
    """Pixel offsets (N, 2, h, w) -> normalised sampling flow (N, 2, h, w)."""
    _, _, h, w = offsets.shape
    ys = torch.arange(h, device=offsets.device, dtype=offsets.dtype).view(1, h, 1)
    xs = torch.arange(w, device=offsets.device, dtype=offsets.dtype).view(1, 1, w)
    gx = (xs + offsets[:, 0]) / ((w - 1) / 2) - 1
    gy = (ys + offsets[:, 1]) / ((h - 1) / 2) - 1
    return torch.stack((gx, gy), dim=1)


def heads_to_batch(block_output: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, 2K, h, w) offsets of K heads -> (B*K, 2, h, w), head k of image b at row b*K + k."""
    b, _, h, w = block_output.shape
    return block_output.reshape(b * heads, 2, h, w)


def compose_flows(flow: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """The old flow read at the grid of the new offsets."""
    return _sample(flow, offsets_to_flow(offsets))


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """Flows and attention maps between levels; flows are normalised, so no rescale."""
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def deformable_sample_reference(features: torch.Tensor, flows: torch.Tensor,
                                weights: torch.Tensor) -> torch.Tensor:
    """out[b] = sum_k weights[b, k] * sample(features[b], flows[b*K + k]).

    The plain-torch reference that every kernel is tested against. Unlike the
    published code it never repeats ``features`` K times: it loops over the
    heads, so the extra memory is one (B, C, h, w) sample, not K copies.
    Accumulates in the features' dtype (fp32 in the reference network).
    """
    b, k = weights.shape[:2]
    head_flows = flows.view(b, k, *flows.shape[1:])
    out = None
    for head in range(k):
        term = _sample(features, head_flows[:, head].to(features.dtype)) \
            * weights[:, head:head + 1].to(features.dtype)
        out = term if out is None else out + term
    return out


def deformable_sample_published(features: torch.Tensor, flows: torch.Tensor,
                                weights: torch.Tensor) -> torch.Tensor:
    """The published formulation: features repeated K times along the batch and
    weights repeated per channel. Kept only as the benchmarks' baseline."""
    b, c, h, w = features.shape
    k = weights.shape[1]
    repeated = features.repeat_interleave(k, dim=0)
    sampled = _sample(repeated, flows).view(b, k, c, h, w)
    expanded = weights.unsqueeze(2).repeat(1, 1, c, 1, 1)
    return (sampled * expanded).sum(dim=1)
