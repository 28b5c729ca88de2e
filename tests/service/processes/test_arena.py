"""service/processes/arena.py: the slots a front-end process and the engine process share."""
from __future__ import annotations

import torch

from service.processes.arena import Arena

HW = (4, 3)


def levels(value: int) -> torch.Tensor:
    return torch.full((3, *HW), value, dtype=torch.uint8)


def test_a_second_mapping_reads_what_the_first_wrote():
    front = Arena.create(2, HW)
    engine = Arena(front.fd, HW)  # as the engine process maps the same file
    pose = torch.arange(36, dtype=torch.uint8).view(3, *HW)
    slot = front.put(pose, levels(1), levels(2).permute(0, 2, 1).contiguous().permute(0, 2, 1))  # any strides
    assert engine.slots == front.slots == 2
    assert [torch.equal(a, b) for a, b in zip(engine.inputs(slot), (pose, levels(1), levels(2)))] == [True] * 3
    assert engine.inputs(slot)[0].permute(1, 2, 0).is_contiguous()  # in pixel order, as a batch is stacked
    engine.output(slot).copy_(levels(9))
    assert torch.equal(front.output(slot), levels(9))


def test_slots_run_out_and_come_back():
    arena = Arena.create(2, HW)
    taken = [arena.put(levels(i), levels(i), levels(i)) for i in range(3)]
    assert taken == [0, 1, None] and arena.free == 0  # the third crosses in its message
    arena.release(1)
    assert arena.free == 1 and arena.put(levels(5), levels(5), levels(5)) == 1
    assert torch.equal(arena.inputs(1)[2], levels(5))


def test_only_model_sized_images_go_in_a_slot():
    arena = Arena.create(1, HW)
    assert arena.put(levels(0), levels(0), torch.zeros(3, 5, 3, dtype=torch.uint8)) is None
    assert arena.free == 1


def test_an_empty_arena_holds_nothing():
    arena = Arena.create(0, HW)
    assert arena.slots == 0 and arena.put(levels(0), levels(0), levels(0)) is None
