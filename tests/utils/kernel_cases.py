"""One case builder and one comparison for every sampling kernel's tests
(tests/model/kernels/test_triton_sampling.py, tests/model/kernels/test_cpu_sampling.py). The bounds sit beside
the dtype in model.kernels.selfcheck, which the engine's warm-up check uses too."""
from __future__ import annotations

import torch

WEIGHT_KINDS = ("peaked", "flat", "arbitrary", "signed")


def random_case(gen: torch.Generator, b: int, k: int, c: int, in_hw: tuple[int, int],
                out_hw: tuple[int, int] | None = None, flow_scale: float = 3.0, weights_kind: str = "arbitrary",
                device: torch.device | str = "cpu"):
    """Features (b, c, *in_hw), flows (b*k, 2, *out_hw) reaching flow_scale times past the
    border, and weights (b, k, *out_hw) that are peaked (near one-hot), flat (1/K),
    arbitrary (in [0, 2), not summing to 1) or signed (any real numbers)."""
    out_hw = out_hw or in_hw
    features = torch.randn(b, c, *in_hw, generator=gen)
    flows = torch.randn(b * k, 2, *out_hw, generator=gen) * flow_scale
    if weights_kind == "peaked":
        weights = torch.softmax(torch.randn(b, k, *out_hw, generator=gen) * 30, dim=1)
    elif weights_kind == "flat":
        weights = torch.full((b, k, *out_hw), 1.0 / k)
    elif weights_kind == "arbitrary":
        weights = torch.rand(b, k, *out_hw, generator=gen) * 2
    elif weights_kind == "signed":
        weights = torch.randn(b, k, *out_hw, generator=gen)
    else:
        raise ValueError(f"weights_kind must be one of {WEIGHT_KINDS}")
    return features.to(device), flows.to(device), weights.to(device)


def assert_close(ours: torch.Tensor, reference: torch.Tensor, atol: float, rtol: float = 0.0) -> None:
    """Same shape and dtype, and |ours - reference| <= atol + rtol * |reference| everywhere."""
    assert ours.shape == reference.shape and ours.dtype == reference.dtype
    torch.testing.assert_close(ours.cpu(), reference.cpu(), atol=atol, rtol=rtol)
