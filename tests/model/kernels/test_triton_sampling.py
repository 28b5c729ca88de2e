"""The Triton kernels equal their torch references, on the GPU or, without
one, on CPU tensors under Triton's interpreter.

TRITON_INTERPRET must be set before Triton compiles a kernel, i.e. before the
kernel modules are imported: this module sets it at the top, during pytest's
collection and before any test runs (nothing else imports Triton on a CPU-only
machine; the start-up test below checks exactly that, in a subprocess).
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ["TRITON_INTERPRET"] = "1"

pytest.importorskip("triton")
from model import create_model, load_weights  # noqa: E402
from model.kernels import deformable_sample, requested, resolve  # noqa: E402
from model.kernels.flows import compose_head_flows, compose_head_flows_reference  # noqa: E402
from model.kernels.selfcheck import SAMPLING_FP32_ATOL, composition_bound, sampling_bound  # noqa: E402
from model.kernels.triton_flows import compose_head_flows_triton  # noqa: E402
from model.kernels.triton_sampling import deformable_sample_triton  # noqa: E402
from model.kernels.triton_utils import INTERPRETED  # noqa: E402
from model.sampling import deformable_sample_published, deformable_sample_reference  # noqa: E402
from tests.utils import REPO, REPO_PYTHONPATH, load_golden  # noqa: E402
from tests.utils.kernel_cases import assert_close, random_case  # noqa: E402

# @pytest.mark.isa: the tests whose numbers oneDNN or ATen compute, run again with both held
# to AVX2 (Makefile, test-avx2); the others compute nothing the instruction set can change.

DEVICE = torch.device("cuda" if CUDA else "cpu")
HALF_DTYPES = (torch.float16, torch.bfloat16)


def test_kernels_run_where_they_can():
    """Compiled on a GPU, interpreted without one: never silently something else."""
    assert INTERPRETED != CUDA


def random_shapes(seed, count):
    gen = torch.Generator().manual_seed(seed)

    def pick(lo, hi):
        return int(torch.randint(lo, hi + 1, (1,), generator=gen))

    return [(pick(1, 3), pick(1, 7), pick(1, 70), pick(1, 23), pick(1, 23)) for _ in range(count)]


# Odd, tiny and one-pixel sizes, the network's own K=6 / C=256 and C=64, and random ones.
SHAPES = [(1, 6, 256, 2, 2), (2, 6, 64, 16, 12), (1, 1, 1, 1, 1), (3, 2, 5, 1, 9), (1, 3, 33, 17, 1),
          (2, 6, 256, 5, 3)] + random_shapes(seed=4, count=10)


@pytest.mark.isa
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("weights_kind", ["peaked", "flat", "arbitrary"])
def test_sampling_matches_reference_fp32(shape, weights_kind):
    gen = torch.Generator().manual_seed(SHAPES.index(shape) * 3 + len(weights_kind))
    features, flows, weights = random_case(gen, *shape[:3], shape[3:], weights_kind=weights_kind, device=DEVICE)
    ours = deformable_sample_triton(features, flows, weights)
    reference = deformable_sample_reference(features, flows, weights)
    assert ours.dtype == torch.float32
    assert_close(ours, reference, SAMPLING_FP32_ATOL)


@pytest.mark.isa
@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(2, 6, 40, 9, 13), (1, 3, 64, 16, 16)], ids=lambda s: "x".join(map(str, s)))
def test_sampling_half_features_accumulate_in_fp32(shape, dtype):
    """fp16/bf16 features, fp32 flows and weights: the result is the fp32 sum of
    the (exactly representable) half features, rounded once to the half dtype."""
    gen = torch.Generator().manual_seed(7)
    features, flows, weights = random_case(gen, *shape[:3], shape[3:], device=DEVICE)
    features = features.to(dtype)
    ours = deformable_sample_triton(features, flows, weights)
    exact = deformable_sample_reference(features.float(), flows, weights)
    assert ours.dtype == dtype
    assert_close(ours.float(), exact, sampling_bound(dtype, exact))


@pytest.mark.isa
def test_sampling_keeps_layout_and_reads_strided_inputs():
    """Channels-last features give channels-last output; channel slices (views)
    and non-contiguous flows are read through their strides."""
    gen = torch.Generator().manual_seed(11)
    features, flows, weights = random_case(gen, 2, 6, 48, (11, 7), weights_kind="arbitrary", device=DEVICE)
    reference = deformable_sample_reference(features, flows, weights)
    last = deformable_sample_triton(features.contiguous(memory_format=torch.channels_last), flows, weights)
    assert last.is_contiguous(memory_format=torch.channels_last)
    assert_close(last, reference, SAMPLING_FP32_ATOL)

    wide = torch.cat((features, features), dim=1)[:, 48:]
    strided_flows = flows.transpose(2, 3).contiguous().transpose(2, 3)
    strided = deformable_sample_triton(wide, strided_flows, weights)
    assert not wide.is_contiguous() and not strided_flows.is_contiguous()
    assert_close(strided, reference, SAMPLING_FP32_ATOL)


def test_sampling_rejects_mismatched_shapes():
    gen = torch.Generator().manual_seed(0)
    features, flows, weights = random_case(gen, 1, 2, 3, (4, 5), weights_kind="flat", device=DEVICE)
    with pytest.raises(ValueError):
        deformable_sample_triton(features, flows[:1], weights)
    with pytest.raises(TypeError):
        deformable_sample_triton(features.double(), flows, weights)


@pytest.mark.isa
@pytest.mark.parametrize("shape", [(1, 6, 2, 2), (2, 6, 8, 6), (1, 3, 13, 5), (2, 1, 32, 32)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("offsets_dtype", [torch.float32, torch.float16], ids=str)
def test_flow_composition_matches_reference(shape, offsets_dtype):
    """Offsets read straight from a channel slice of a flow block's output,
    large enough to leave the map, composed with a flow already past [-1, 1]."""
    b, k, h, w = shape
    gen = torch.Generator().manual_seed(b * 1000 + k * 100 + h * 10 + w)
    flow = (torch.randn(b * k, 2, h, w, generator=gen) * 1.5).to(DEVICE)
    block_output = (torch.randn(b, 3 * k, h, w, generator=gen) * max(h, w)).to(DEVICE, offsets_dtype)
    block_offsets = block_output[:, :2 * k]
    ours = compose_head_flows_triton(flow, block_offsets, k)
    reference = compose_head_flows_reference(flow, block_offsets, k)
    assert ours.dtype == torch.float32 and ours.shape == (b * k, 2, h, w)
    # Not 1e-5: on a GPU the kernel divides approximately (div.full.f32, up to 2 ulp).
    assert_close(ours, reference, composition_bound(flow, h, w))


@pytest.mark.isa
def test_dispatch_runs_the_kernels_by_name():
    gen = torch.Generator().manual_seed(5)
    features, flows, weights = random_case(gen, 2, 6, 16, (8, 8), weights_kind="peaked", device=DEVICE)
    reference = deformable_sample_reference(features, flows, weights)
    for impl in ("triton", "torch", "published"):
        assert_close(deformable_sample(features, flows, weights, impl=impl), reference, SAMPLING_FP32_ATOL)
    block = torch.randn(2, 12, 8, 8, generator=gen).to(DEVICE)
    assert_close(compose_head_flows(flows, block, 6, impl="triton"), compose_head_flows(flows, block, 6, impl="torch"),
                 composition_bound(flows, 8, 8))


@pytest.mark.isa
def test_published_baseline_equals_reference():
    gen = torch.Generator().manual_seed(6)
    features, flows, weights = random_case(gen, 2, 6, 32, (9, 7), weights_kind="arbitrary", device=DEVICE)
    assert_close(deformable_sample_published(features, flows, weights),
                 deformable_sample_reference(features, flows, weights), SAMPLING_FP32_ATOL)


def test_auto_picks_triton_on_cuda_and_env_forces(monkeypatch):
    monkeypatch.delenv("TRYON_SAMPLER", raising=False)
    assert requested("auto") == "auto" and resolve("auto", torch.device("cuda")) == "triton"
    assert resolve("torch", torch.device("cuda")) == "torch"
    monkeypatch.setenv("TRYON_SAMPLER", "torch")
    assert requested("auto") == "torch" and requested("numba") == "numba"
    assert resolve("auto", torch.device("cuda")) == "triton"  # resolve never reads the variable
    monkeypatch.setenv("TRYON_SAMPLER", "bogus")
    with pytest.raises(ValueError):
        requested("auto")
    with pytest.raises(ValueError):
        resolve("bogus", torch.device("cpu"))


@pytest.mark.isa
def test_network_with_kernels_matches_golden(standin_state, ieee_fp32_convolutions):
    """The whole network on the Triton path (sampling and composition) gives the
    golden 64x64 output within 1e-4 in fp32."""
    golden = load_golden("golden_64x64.pt")
    net = load_weights(create_model(sampler="triton"), standin_state).to(DEVICE)
    pose, masked, cloth = (golden[name].to(DEVICE) for name in ("pose", "masked_model", "cloth"))
    with torch.inference_mode():
        out = net(torch.cat((pose, masked), dim=1), cloth, masked)
    assert_close(out, golden["tryon"], 1e-4)


def test_cpu_startup_never_imports_triton():
    """Importing the model and running a CPU forward leaves Triton unimported."""
    script = textwrap.dedent("""
        import os, sys, torch
        import model, model.engine, model.kernels
        from model import create_model
        net = create_model(sampler="auto")
        x = torch.zeros(1, 3, 64, 64)
        with torch.inference_mode():
            out = net(torch.cat((x, x), 1), x, x)
        assert out.shape == (1, 3, 64, 64)
        print("triton" in sys.modules)
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "TRYON_SAMPLER")}
    env["PYTHONPATH"] = REPO_PYTHONPATH
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
