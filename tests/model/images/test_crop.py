"""model/images/crop.py: a box of the model's aspect ratio cut out of a picture, scaled, padded where
it leaves the picture; points, labels and pictures at a reduced size all go through the same map."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from model.images import Crop, image_to_levels

WHITE = (255, 255, 255)


def marked(size_wh: tuple[int, int], at: tuple[int, int]) -> Image.Image:
    """Grey, with a 20 x 20 red square whose corner is ``at``."""
    img = Image.new("RGB", size_wh, (128, 128, 128))
    img.paste((255, 0, 0), (*at, at[0] + 20, at[1] + 20))
    return img


def test_the_box_is_of_the_models_aspect_and_placed_as_asked():
    crop = Crop.around((1000, 800), (500, 300), 401, 0.25, (192, 256))
    left, top, right, bottom = crop.box
    assert (right - left, bottom - top) == (300, 400) and (left, top) == (350, 200)
    assert crop.scale == 256 / 400


def test_pixels_points_and_labels_go_through_the_same_map():
    img = marked((1000, 800), (600, 400))
    crop = Crop((1000, 800), (300, -100, 900, 700), (192, 256))  # reaches past the top
    levels = crop.fit_levels(img, WHITE)
    x, y = crop.apply_points([[610, 410]])[0]
    assert levels[:, int(y), int(x)].tolist() == [255, 0, 0], "the square's middle where the map puts it"
    top = crop.content_box[1]
    assert top == 32 and (levels[:, :top - 1] == 255).all(), "padded above the picture"
    labels = Image.fromarray((np.asarray(img)[..., 1] == 0).astype(np.uint8) * 7)
    cut = np.asarray(crop.fit_labels(labels))
    assert cut[int(y), int(x)] == 7 and set(np.unique(cut)) == {0, 7}, "labels stay labels"
    half = crop.fit_levels(image_to_levels(img.resize((500, 400))), WHITE)  # a reduced decoding of it
    assert (half.to(torch.int16) - levels).abs().float().mean() < 2


def test_a_box_wholly_outside_is_all_padding_and_the_whole_picture_is_itself():
    img = marked((192, 256), (10, 10))
    assert (Crop((192, 256), (400, 0, 592, 256), (192, 256)).fit_levels(img, (1, 2, 3))
            == torch.tensor([1, 2, 3])[:, None, None]).all()
    whole = Crop.whole((192, 256))
    assert whole.fit(img) is img and np.allclose(whole.apply_points([[5.5, 7]]), [[5.5, 7]])
