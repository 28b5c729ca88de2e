"""Flow composition per head, dispatched like the sampling (model.kernels).

``compose_head_flows(flow, block_offsets, heads, impl)`` is the step every
flow block ends with: the offsets of K heads, channels (2k, 2k+1) of the
block's output, refine the old flows by composition. "triton" runs the fused
kernel (model.kernels.triton_flows); every other implementation runs the
torch reference in fp32 (model.sampling.compose_flows).
"""
from __future__ import annotations

import torch

from ..sampling import compose_flows, heads_to_batch
from . import resolve


def compose_head_flows_reference(flow: torch.Tensor, block_offsets: torch.Tensor, heads: int) -> torch.Tensor:
    return compose_flows(flow.float(), heads_to_batch(block_offsets.float(), heads))


def compose_head_flows(flow: torch.Tensor, block_offsets: torch.Tensor, heads: int,
                       impl: str = "auto") -> torch.Tensor:
    if resolve(impl, flow.device) == "triton":
        from .triton_flows import compose_head_flows_triton
        return compose_head_flows_triton(flow, block_offsets, heads)
    return compose_head_flows_reference(flow, block_offsets, heads)
