"""The Numba CPU sampler gives the torch reference's numbers on any input."""
from __future__ import annotations

import pytest
import torch

from model.kernels import deformable_sample
from model.kernels.cpu_sampling import deformable_sample_cpu
from model.sampling import deformable_sample_published, deformable_sample_reference
from tests.utils.kernel_cases import assert_close, random_case

# @pytest.mark.isa: the tests whose numbers oneDNN or ATen compute, run again with both held
# to AVX2 (Makefile, test-avx2); the others compute nothing the instruction set can change.

ATOL = 1e-5
RTOL = 1e-5


def assert_matches_reference(features, flows, weights):
    assert_close(deformable_sample_cpu(features, flows, weights), deformable_sample_reference(features, flows, weights),
                 ATOL, RTOL)


@pytest.mark.isa
def test_many_random_shapes():
    """Odd and tiny sizes, input size unlike output size, flows far outside [-1, 1]."""
    gen = torch.Generator().manual_seed(0)
    for case in range(60):
        b = int(torch.randint(1, 4, (1,), generator=gen))
        k = int(torch.randint(1, 8, (1,), generator=gen))
        c = int(torch.randint(1, 70, (1,), generator=gen))
        in_hw = tuple(int(v) for v in torch.randint(1, 20, (2,), generator=gen))
        out_hw = in_hw if case % 3 else tuple(int(v) for v in torch.randint(1, 20, (2,), generator=gen))
        flow_scale = (0.5, 1.0, 3.0, 20.0)[case % 4]
        weight_kind = ("peaked", "flat", "signed")[case % 3]
        assert_matches_reference(*random_case(gen, b, k, c, in_hw, out_hw, flow_scale, weight_kind))


@pytest.mark.isa
def test_network_sized_level():
    """One level as the network sees it: C=256, K=6, an odd 33x25 grid."""
    gen = torch.Generator().manual_seed(1)
    assert_matches_reference(*random_case(gen, 2, 6, 256, (33, 25), (33, 25), 1.2, "peaked"))


@pytest.mark.isa
def test_pixel_centres_read_exact_values_and_border_clamps():
    """align_corners=False: grid x = (2i + 1) / W - 1 is pixel i's centre; far-off
    points (infinite ones included) read the nearest border pixel."""
    h, w = 5, 7
    features = torch.arange(2 * h * w, dtype=torch.float32).view(1, 2, h, w)
    xs = (2 * torch.arange(w) + 1) / w - 1
    ys = (2 * torch.arange(h) + 1) / h - 1
    centres = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=0).unsqueeze(0)
    weights = torch.ones(1, 1, h, w)
    torch.testing.assert_close(deformable_sample_cpu(features, centres, weights), features, atol=1e-4, rtol=0)

    far = torch.tensor([[-50.0, -50.0], [50.0, 50.0], [float("inf"), float("-inf")]])
    flows = far.view(3, 2, 1, 1)
    out = deformable_sample_cpu(features, flows, torch.ones(1, 3, 1, 1) / 3)
    corners = features[0, :, 0, 0] + features[0, :, -1, -1] + features[0, :, 0, -1]
    torch.testing.assert_close(out[0, :, 0, 0], corners / 3)
    assert_matches_reference(features, flows, torch.ones(1, 3, 1, 1) / 3)


@pytest.mark.isa
def test_non_contiguous_inputs():
    gen = torch.Generator().manual_seed(2)
    features, flows, weights = random_case(gen, 2, 3, 9, (11, 13), (11, 13), 1.5, "signed")
    features_cl = features.contiguous(memory_format=torch.channels_last)
    flows_strided = torch.cat((flows, flows), dim=1)[:, ::2]
    weights_t = weights.transpose(2, 3).contiguous().transpose(2, 3)
    assert not flows_strided.is_contiguous() and not weights_t.is_contiguous()
    assert_matches_reference(features_cl, flows_strided, weights_t)
    assert_matches_reference(features[:, 1:8], flows, weights)


@pytest.mark.isa
def test_other_dtypes_are_computed_in_fp32():
    gen = torch.Generator().manual_seed(3)
    features, flows, weights = random_case(gen, 1, 4, 5, (9, 7), (9, 7), 1.0, "peaked")
    out = deformable_sample_cpu(features.double(), flows.double(), weights.double())
    assert out.dtype == torch.float64
    ref = deformable_sample_reference(features.double(), flows.double(), weights.double())
    assert_close(out, ref, ATOL, RTOL)


@pytest.mark.isa
@pytest.mark.parametrize("impl", ["numba", "published"])
def test_dispatch_names(impl):
    gen = torch.Generator().manual_seed(4)
    features, flows, weights = random_case(gen, 2, 6, 16, (12, 10), (12, 10), 1.0, "peaked")
    assert_close(deformable_sample(features, flows, weights, impl=impl),
                 deformable_sample_reference(features, flows, weights), ATOL, RTOL)


@pytest.mark.isa
def test_published_formulation_is_the_same_sum():
    gen = torch.Generator().manual_seed(5)
    case = random_case(gen, 3, 6, 8, (10, 6), (10, 6), 2.0, "signed")
    assert_close(deformable_sample_published(*case), deformable_sample_reference(*case), ATOL, RTOL)


def test_refuses_what_it_cannot_do():
    features, flows, weights = torch.zeros(1, 4, 6, 6), torch.zeros(3, 2, 6, 6), torch.zeros(1, 3, 6, 6)
    with pytest.raises(ValueError, match="shapes"):
        deformable_sample_cpu(features, flows[:2], weights)
    with pytest.raises(RuntimeError, match="backward"):
        deformable_sample_cpu(features.requires_grad_(), flows, weights)
