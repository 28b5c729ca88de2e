"""The network reproduces the published one: keys, shapes and golden outputs."""
from __future__ import annotations

import pytest
import torch

from model import create_model, load_weights
from model.network import check_size
from tests.utils import load_golden

# @pytest.mark.isa: the tests whose numbers oneDNN or ATen compute, run again with both held
# to AVX2 (Makefile, test-avx2); the others compute nothing the instruction set can change.

TOLERANCE = 1e-4


def test_state_dict_matches_checkpoint_keys(checkpoint_keys):
    state = create_model().state_dict()
    assert [(k, tuple(v.shape)) for k, v in state.items()] == [(k, tuple(s)) for k, s in checkpoint_keys]
    assert sum(p.numel() for p in create_model().parameters()) == 37_651_485


def test_create_model_is_eval_fp32_cpu():
    net = create_model()
    assert not net.training
    assert {p.dtype for p in net.parameters()} == {torch.float32}
    assert {p.device.type for p in net.parameters()} == {"cpu"}


@pytest.mark.isa
@pytest.mark.parametrize("sampler,memory_format", [("torch", torch.contiguous_format),
                                                   ("numba", torch.contiguous_format),
                                                   ("numba", torch.channels_last)])  # as the CPU engine runs
@pytest.mark.parametrize("golden_name", ["golden_64x64.pt", "golden_256x192.pt"])
def test_golden_output(golden_name, sampler, memory_format, standin_state):
    golden = load_golden(golden_name)
    assert golden["weight_seed"] == 0
    net = load_weights(create_model(sampler=sampler), standin_state).to(memory_format=memory_format)
    pose, masked, cloth = (golden[k].contiguous(memory_format=memory_format)
                           for k in ("pose", "masked_model", "cloth"))
    with torch.inference_mode():
        out = net(torch.cat((pose, masked), dim=1), cloth, masked)
    assert out.shape == golden["tryon"].shape
    assert (out - golden["tryon"]).abs().max().item() < TOLERANCE


@pytest.mark.isa
def test_golden_per_level_results(standin_state):
    golden = load_golden("golden_64x64.pt")
    net = load_weights(create_model(sampler="torch"), standin_state)
    ref_input = torch.cat((golden["pose"], golden["masked_model"]), dim=1)
    with torch.inference_mode():
        levels = net(ref_input, golden["cloth"], golden["masked_model"], return_all=True)
    assert len(levels) == len(golden["levels"]) == 5
    for ours, theirs in zip(levels, golden["levels"]):
        assert ours.shape == theirs.shape
        assert (ours - theirs).abs().max().item() < TOLERANCE


@pytest.mark.isa
def test_batch_items_are_independent(standin_state):
    """A batch gives each image the result it gets alone, at a non-square size."""
    net = load_weights(create_model(sampler="torch"), standin_state)
    gen = torch.Generator().manual_seed(3)
    pose, masked, cloth = (torch.rand(3, 3, 96, 64, generator=gen) * 2 - 1 for _ in range(3))
    with torch.inference_mode():
        batched = net(torch.cat((pose, masked), 1), cloth, masked)
        for i in range(3):
            alone = net(torch.cat((pose[i:i + 1], masked[i:i + 1]), 1), cloth[i:i + 1], masked[i:i + 1])
            assert (alone - batched[i:i + 1]).abs().max().item() < TOLERANCE


@pytest.mark.parametrize("h,w,ok", [(64, 64, True), (96, 128, True), (256, 192, True),
                                    (32, 64, False), (80, 64, False), (64, 100, False)])
def test_check_size(h, w, ok):
    if ok:
        check_size(h, w)
    else:
        with pytest.raises(ValueError):
            check_size(h, w)


def test_concatenation_keeps_the_garment_layout_with_a_shared_person():
    """One person's features expanded over N garments (batch stride 0) with channels-last
    garment features: the concatenation stays channels-last, equal to torch.cat."""
    from model.network import cat_channels
    garments = torch.randn(3, 8, 5, 6).contiguous(memory_format=torch.channels_last)
    person = torch.randn(1, 8, 5, 6).contiguous(memory_format=torch.channels_last).expand(3, -1, -1, -1)
    assert not torch.cat((garments, person), dim=1).is_contiguous(memory_format=torch.channels_last)
    joined = cat_channels(garments, person)
    assert joined.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(joined, torch.cat((garments, person), dim=1))
    nchw = cat_channels(garments.contiguous(), person.contiguous())
    assert nchw.is_contiguous() and torch.equal(nchw, joined)
