"""Deformable attention sampling: one entry point, several implementations.

``deformable_sample(features, flows, weights, impl="auto")`` computes
``out[b] = sum_k weights[b, k] * grid_sample(features[b], flows[b*K + k])``
(bilinear, border padding, align_corners=False) with features (B, C, H, W),
flows (B*K, 2, H, W) and weights (B, K, H, W).

impl:
  "torch"  the plain reference (model.sampling), any device;
  "triton" the fused GPU kernel (model.kernels.triton_sampling);
  "numba"  the fused CPU kernel (model.kernels.cpu_sampling);
  "published" the published repeat-K-times formulation (benchmark baseline);
  "auto"   triton on CUDA when Triton imports, numba on the CPU when Numba
           imports, the reference otherwise.
``TRYON_SAMPLER`` is read once, by whoever builds the network (``requested``: the
engine, at construction), and the name it resolves to is passed down; ``resolve``
and the calls on every forward never read it.
Triton and Numba are imported lazily, on first use, never at start-up.
Flows and weights stay fp32; with fp16/bf16 features the Triton kernel
accumulates in fp32 itself, the others run on fp32 copies of the features.
"""
from __future__ import annotations

import functools
import importlib.util
import os

import torch

from ..sampling import deformable_sample_published, deformable_sample_reference

IMPLEMENTATIONS = ("auto", "triton", "numba", "torch", "published")
# Forces one implementation on a network built for "auto" (the service's setting, TRYON_SAMPLER).
FORCE_ENV = "TRYON_SAMPLER"


@functools.lru_cache(maxsize=None)
def available(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def requested(impl: str) -> str:
    """What is asked for: ``impl``, or for "auto" what TRYON_SAMPLER names when it is set. Read once,
    when the network is built; an unknown name is a ValueError here."""
    forced = os.environ.get(FORCE_ENV, "").strip().lower()
    if impl == "auto" and forced:
        impl = forced
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"unknown sampler {impl!r}; expected one of {IMPLEMENTATIONS}")
    return impl


def resolve(impl: str, device: torch.device) -> str:
    """The implementation that ``impl`` means for tensors on ``device`` (no environment read)."""
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"unknown sampler {impl!r}; expected one of {IMPLEMENTATIONS}")
    if impl != "auto":
        return impl
    if device.type == "cuda" and available("triton"):
        return "triton"
    if device.type == "cpu" and available("numba"):
        return "numba"
    return "torch"


def deformable_sample(features: torch.Tensor, flows: torch.Tensor, weights: torch.Tensor,
                      impl: str = "auto") -> torch.Tensor:
    chosen = resolve(impl, features.device)
    if chosen == "triton":
        from .triton_sampling import deformable_sample_triton
        return deformable_sample_triton(features, flows, weights)
    if features.dtype != torch.float32:
        # The others sample in the features' dtype, which would round the flows.
        return deformable_sample(features.float(), flows, weights, chosen).to(features.dtype)
    if chosen == "numba":
        from .cpu_sampling import deformable_sample_cpu
        return deformable_sample_cpu(features, flows, weights)
    if chosen == "published":
        return deformable_sample_published(features, flows, weights)
    return deformable_sample_reference(features, flows, weights)
