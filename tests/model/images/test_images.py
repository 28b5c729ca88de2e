"""Image preparation: every common mode and format, EXIF, odd aspect ratios, bad bytes."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from model.images import (BLACK, ImageError, ImageTooLarge, Letterbox, decode_image, encode_image, image_to_levels,
                          image_to_tensor, output_image, prepare_inputs, resize_bicubic, stack_levels, tensor_to_image)


def _bytes(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _gradient(w=48, h=64) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None].repeat(w, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], -1).astype(np.uint8), "RGB")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_formats_decode_to_rgb(fmt):
    img = _gradient()
    out = decode_image(_bytes(img, fmt, **({"quality": 95} if fmt != "PNG" else {})), "cloth")
    assert out.mode == "RGB" and out.size == img.size
    diff = np.abs(np.asarray(out, np.int16) - np.asarray(img, np.int16)).mean()
    assert diff < (0.01 if fmt == "PNG" else 4.0)


def test_rgba_is_flattened_on_the_background():
    img = Image.new("RGBA", (8, 8), (10, 20, 30, 0))
    img.putpixel((0, 0), (10, 20, 30, 255))
    white = decode_image(_bytes(img, "PNG"), "cloth")
    black = decode_image(_bytes(img, "PNG"), "pose", background=(0, 0, 0))
    assert white.getpixel((0, 0)) == (10, 20, 30) and white.getpixel((5, 5)) == (255, 255, 255)
    assert black.getpixel((5, 5)) == (0, 0, 0)


def test_la_l_p_and_cmyk_modes():
    la = Image.new("LA", (4, 4), (100, 255))
    assert decode_image(_bytes(la, "PNG"), "x").getpixel((1, 1)) == (100, 100, 100)
    grey = Image.new("L", (4, 4), 77)
    assert decode_image(_bytes(grey, "PNG"), "x").getpixel((1, 1)) == (77, 77, 77)
    pal = Image.new("RGB", (4, 4), (200, 10, 10)).convert("P", palette=Image.ADAPTIVE, colors=4)
    assert decode_image(_bytes(pal, "PNG"), "x").getpixel((1, 1)) == (200, 10, 10)
    transparent_p = Image.new("P", (4, 4), 0)
    transparent_p.putpalette([0, 0, 255] + [0] * 765)
    assert decode_image(_bytes(transparent_p, "PNG", transparency=0), "x").getpixel((1, 1)) == (255, 255, 255)
    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))  # pure red
    r, g, b = decode_image(_bytes(cmyk, "JPEG", quality=100), "x").getpixel((1, 1))
    assert r > 240 and g < 15 and b < 15


def test_16_bit_greyscale_is_rescaled_not_clipped():
    arr = np.full((4, 4), 32768, dtype=np.uint16)
    img = Image.fromarray(arr)
    out = decode_image(_bytes(img, "PNG"), "pose")
    assert out.getpixel((0, 0)) in ((127, 127, 127), (128, 128, 128))


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 10, 20))  # blue on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display needs a 90 degree clockwise turn
    out = decode_image(_bytes(img, "JPEG", exif=exif.tobytes(), quality=95), "masked_model")
    assert out.size == (20, 40)
    top = np.asarray(out)[2, 10]
    assert top[2] > 200 and top[0] < 60  # the left edge is now at the top


@pytest.mark.parametrize("data", [b"", b"not an image at all", _bytes(_gradient(), "PNG")[:60]])
def test_corrupt_bytes_name_the_field(data):
    with pytest.raises(ImageError) as err:
        decode_image(data, "cloth")
    assert err.value.field == "cloth" and str(err.value).startswith("cloth: ")


def test_pixel_limit_is_checked_before_decoding():
    big = _bytes(Image.new("L", (3000, 3000)), "PNG")
    with pytest.raises(ImageTooLarge, match="over the limit"):
        decode_image(big, "masked_model", max_pixels=1_000_000)


@pytest.mark.parametrize("size", [(192, 256), (1000, 500), (300, 1200), (37, 91)])
def test_letterbox_keeps_aspect_and_round_trips(size):
    frame = Letterbox(size, (192, 256))
    left, top, right, bottom = frame.content_box
    assert 0 <= left and right <= 192 and 0 <= top and bottom <= 256
    assert right - left == 192 or bottom - top == 256  # fits one side exactly
    assert abs((right - left) / (bottom - top) - size[0] / size[1]) < 0.05 * size[0] / size[1] + 0.03
    src = _gradient(*size)
    back = frame.restore(frame.apply(src))
    assert back.size == size
    if min(size) >= 192:
        assert np.abs(np.asarray(back, np.int16) - np.asarray(src, np.int16)).mean() < 6
    corners = np.array([[0, 0], [size[0], size[1]]])
    assert np.allclose(frame.apply_points(corners), [[left, top], [right, bottom]])


@pytest.mark.parametrize("size", [(192, 256), (384, 512), (1000, 500), (300, 1200), (37, 91)])
def test_fit_levels_is_the_letterbox_drawn_on_a_canvas(size):
    """Levels straight from the decoded image: what resizing, then pasting on a canvas of the
    pad colour, gives (shrinking, growing, padding, or none of them)."""
    frame = Letterbox(size, (192, 256))
    src = _gradient(*size)
    left, top, right, bottom = frame.content_box
    canvas = Image.new("RGB", (192, 256), BLACK)
    canvas.paste(resize_bicubic(src, (right - left, bottom - top)) if src.size != (right - left, bottom - top)
                 else src, (left, top))
    levels = frame.fit_levels(src, BLACK)
    assert levels.shape == (3, 256, 192) and levels.permute(1, 2, 0).is_contiguous()  # pixel order
    assert torch.equal(levels, image_to_levels(canvas))
    assert torch.equal(image_to_levels(frame.fit(src, BLACK)), levels)


def test_stack_levels_is_torch_stack_in_pixel_order():
    levels = [image_to_levels(_gradient(48 + i, 64)).roll(i, 2)[:, :, :48] for i in range(3)]
    batch = stack_levels(levels)
    assert torch.equal(batch, torch.stack(levels))
    assert batch.is_contiguous(memory_format=torch.channels_last)


def test_prepare_inputs_shares_the_person_transform():
    person = _gradient(300, 300)
    pose = Image.new("RGB", (150, 150), (0, 0, 0))
    pose.paste((255, 0, 0), (70, 70, 80, 80))  # a dot in the centre, at half the person's size
    cloth = _gradient(500, 200)
    inputs = prepare_inputs(_bytes(person, "PNG"), _bytes(pose, "PNG"), _bytes(cloth, "PNG"), size_hw=(256, 192))
    for t in (inputs.masked_model, inputs.pose, inputs.cloth):
        assert t.shape == (3, 256, 192) and t.dtype == torch.uint8  # levels: the engine normalises
    assert inputs.person_frame.content_box == (0, 32, 192, 224)
    assert inputs.masked_model[:, 5, 100].tolist() == [255, 255, 255]  # white pad above the person
    assert inputs.pose[:, 5, 100].tolist() == [0, 0, 0]  # black pad on the pose map
    assert inputs.pose[0, 128, 96] > 191  # the dot lands in the same place as in the person frame
    for t in inputs.batch():
        assert t.shape == (1, 3, 256, 192) and t.dtype == torch.float32 and t.min() >= -1 and t.max() <= 1


def test_tensor_round_trip_and_output_clamp():
    img = _gradient(64, 64)
    assert np.array_equal(np.asarray(tensor_to_image(image_to_tensor(img))), np.asarray(img))
    t = torch.tensor([-3.0, -1.0, 0.0, 0.999, 1.0, 7.0]).view(3, 1, 2)
    assert np.asarray(tensor_to_image(t)).transpose(2, 0, 1).reshape(-1).tolist() == [0, 0, 128, 255, 255, 255]


def test_output_at_original_size():
    frame = Letterbox((300, 600), (192, 256))
    t = torch.zeros(3, 256, 192)
    assert output_image(t, frame, "model").size == (192, 256)
    assert output_image(t, frame, "original").size == (300, 600)
    with pytest.raises(ValueError):
        output_image(t, frame, "huge")


@pytest.mark.parametrize("fmt,magic", [("jpeg", b"\xff\xd8"), ("png", b"\x89PNG"), ("webp", b"RIFF")])
def test_encode_formats(fmt, magic):
    data = encode_image(_gradient(), fmt)
    assert data.startswith(magic)
    assert Image.open(io.BytesIO(data)).size == (48, 64)


# --- levels <-> network values: one table, the same on every device -------------------------

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
