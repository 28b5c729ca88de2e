"""The model's inputs from image bytes (model/images/inputs.py)."""
from __future__ import annotations

import torch
from PIL import Image

from model.images import prepare_inputs
from tests.utils.pictures import gradient, saved


def test_prepare_inputs_shares_the_person_transform():
    person = gradient(300, 300)
    pose = Image.new("RGB", (150, 150), (0, 0, 0))
    pose.paste((255, 0, 0), (70, 70, 80, 80))  # a dot in the centre, at half the person's size
    cloth = gradient(500, 200)
    inputs = prepare_inputs(saved(person, "PNG"), saved(pose, "PNG"), saved(cloth, "PNG"), size_hw=(256, 192))
    for t in (inputs.masked_model, inputs.pose, inputs.cloth):
        assert t.shape == (3, 256, 192) and t.dtype == torch.uint8  # levels: the engine normalises
    assert inputs.person_frame.content_box == (0, 32, 192, 224)
    assert inputs.masked_model[:, 5, 100].tolist() == [255, 255, 255]  # white pad above the person
    assert inputs.pose[:, 5, 100].tolist() == [0, 0, 0]  # black pad on the pose map
    assert inputs.pose[0, 128, 96] > 191  # the dot lands in the same place as in the person frame
    for t in inputs.batch():
        assert t.shape == (1, 3, 256, 192) and t.dtype == torch.float32 and t.min() >= -1 and t.max() <= 1
