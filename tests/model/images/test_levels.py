"""Levels (model/images/levels.py): 8-bit pictures to tensors and back, batches in pixel order, and
levels <-> network values through one table, the same on every device."""
from __future__ import annotations

import numpy as np
import torch

from model.images import image_to_levels, image_to_tensor, stack_levels, tensor_to_image
from tests.utils.pictures import gradient


def test_stack_levels_is_torch_stack_in_pixel_order():
    levels = [image_to_levels(gradient(48 + i, 64)).roll(i, 2)[:, :, :48] for i in range(3)]
    batch = stack_levels(levels)
    assert torch.equal(batch, torch.stack(levels))
    assert batch.is_contiguous(memory_format=torch.channels_last)


def test_tensor_round_trip_and_output_clamp():
    img = gradient(64, 64)
    assert np.array_equal(np.asarray(tensor_to_image(image_to_tensor(img))), np.asarray(img))
    t = torch.tensor([-3.0, -1.0, 0.0, 0.999, 1.0, 7.0]).view(3, 1, 2)
    assert np.asarray(tensor_to_image(t)).transpose(2, 0, 1).reshape(-1).tolist() == [0, 0, 128, 255, 255, 255]


def test_levels_are_normalised_by_one_table_for_all_256_levels():
    """Every level's value is x / 127.5 - 1 as the CPU's IEEE division and subtraction give it
    (golden bits below), gathered from LEVEL_VALUES on any device. CUDA's division by a Python
    scalar (a multiplication by the rounded reciprocal, ATen's BinaryOpsKernel) would differ
    in 111 levels: the count is pinned, so the table is what keeps a GPU's inputs the CPU's."""
    from model.images.levels import LEVEL_VALUES, levels_to_tensor
    every = torch.arange(256, dtype=torch.uint8)
    values = levels_to_tensor(every.view(1, 256, 1, 1).expand(1, 256, 2, 3))
    assert values.dtype == torch.float32 and torch.equal(values[0, :, 1, 2], LEVEL_VALUES)
    divided = (torch.arange(256, dtype=torch.float64) / 127.5).float().double().sub(1).float()
    assert torch.equal(LEVEL_VALUES, divided)
    reciprocal = torch.arange(256, dtype=torch.float32).mul(torch.tensor(1 / 127.5, dtype=torch.float32)).sub(1.0)
    assert int((reciprocal != LEVEL_VALUES).sum()) == 111
    bits = LEVEL_VALUES.view(torch.int32)
    assert [hex(int(bits[i]) & 0xFFFFFFFF) for i in (0, 1, 3, 127, 128, 254, 255)] == [
        "0xbf800000", "0xbf7dfdfe", "0xbf79f9fa", "0xbb808080", "0x3b808100", "0x3f7dfdfe", "0x3f800000"]


def test_quantisation_inverts_the_table_and_rounds_half_to_even():
    from model.images.levels import LEVEL_VALUES, levels_to_tensor, tensor_to_levels
    every = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(tensor_to_levels(LEVEL_VALUES), every)
    assert torch.equal(tensor_to_levels(levels_to_tensor(every)), every)
    # Clamped at both ends; 0.0 is level 127.5 exactly and rounds to the even 128.
    assert tensor_to_levels(torch.tensor([-1.0, 2.0, -7.0, 0.0])).tolist() == [0, 255, 0, 128]
    # Half precision in, the same levels out: the network's output is quantised from fp32.
    assert torch.equal(tensor_to_levels(LEVEL_VALUES.to(torch.bfloat16)),
                       tensor_to_levels(LEVEL_VALUES.to(torch.bfloat16).float()))


def test_normalised_levels_keep_the_batch_layout():
    """A batch of pixel-order (channels-last) levels normalises into channels-last values, with
    no transpose: the engine's half modes take it as it is."""
    from model.images.levels import levels_to_tensor
    levels = torch.randint(0, 256, (2, 5, 7, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    values = levels_to_tensor(levels.permute(0, 3, 1, 2))
    assert values.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(values, levels.permute(0, 3, 1, 2).double().div(127.5).float().sub(1.0))
