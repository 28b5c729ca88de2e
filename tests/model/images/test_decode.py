"""The cheap decoding path (reduced JPEG decoding, one resize, no needless copies, one
conversion to float) against the decoding as it was (61db89b: the whole picture
decoded, exif_transpose and convert copying, Letterbox.apply, float conversion
through float32 numpy), on real JPEGs: the service's example masked model, pose
map and cloth, at the model's size and as a shop's 768x1024 photo.

At the model's size nothing is resized or drawn at reduced scale: the tensors are
equal bit for bit. A larger JPEG is decoded by libjpeg at 1/2 (or 1/4, 1/8), at
least twice the size it is letterboxed to, then resized bicubically as before;
the bound is the letterbox's own latitude: new and old differ less than the
choice of the resampling filter itself does (bicubic vs Lanczos on the old path),
within 2 dB, and the new tensors are as faithful to the picture the large JPEG
was scaled up from as the old ones (within 1 dB PSNR). The bicubic resize itself
is torch's 8-bit kernel where it shrinks: Pillow's filter, within one level of
Pillow's own rounding but where the filter overshoots the 8-bit range.
"""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from model.images import (ImageError, ImageTooLarge, Letterbox, decode_image, decode_levels_to_fit, decode_to_fit,
                          image_to_levels, image_to_tensor, levels_to_tensor, prepare_inputs, psnr, resize_bicubic,
                          tensor_to_image)
from model.images.decode import _turbo_levels_to_fit
from tests.fixtures.service.harness import REPO
from tests.utils.pictures import gradient, saved

# @pytest.mark.isa: the tests whose numbers come from ATen's kernels (conversions, torch's 8-bit
# bicubic resize), run again under AVX2 (Makefile, test-avx2). The libjpeg and Pillow decodes
# are not: ONEDNN_MAX_CPU_ISA and ATEN_CPU_CAPABILITY do not reach libjpeg-turbo's SIMD.

NAMES = ("masked_model", "pose", "cloth")
BACKGROUNDS = {"masked_model": (255, 255, 255), "pose": (0, 0, 0), "cloth": (255, 255, 255)}
MODEL_HW = (256, 192)


def example(name: str) -> Image.Image:
    return Image.open(REPO / "service" / "examples" / f"{name}.png").convert("RGB")


def jpeg(img: Image.Image, orientation: int | None = None) -> bytes:
    buf = io.BytesIO()
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    img.save(buf, "JPEG", quality=90, exif=exif.tobytes())
    return buf.getvalue()


def old_tensor(img: Image.Image) -> torch.Tensor:
    """image_to_tensor as it was."""
    arr = np.asarray(img.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1).div(127.5).sub(1.0).contiguous()


def old_inputs(sources: dict[str, bytes], resample=Image.BICUBIC) -> dict[str, torch.Tensor]:
    """prepare_inputs as it was: each picture decoded whole, letterboxed with ``resample``."""
    target_wh = (MODEL_HW[1], MODEL_HW[0])
    out = {}
    for name, data in sources.items():
        img = decode_image(data, name, background=BACKGROUNDS[name])
        frame = Letterbox(img.size, target_wh)
        left, top, right, bottom = frame.content_box
        canvas = Image.new("RGB", target_wh, BACKGROUNDS[name])
        canvas.paste(img.resize((right - left, bottom - top), resample), (left, top))
        out[name] = old_tensor(canvas)
    return out


def new_inputs(sources: dict[str, bytes]) -> dict[str, torch.Tensor]:
    made = prepare_inputs(sources["masked_model"], sources["pose"], sources["cloth"], size_hw=MODEL_HW)
    return {name: levels_to_tensor(getattr(made, name)) for name in NAMES}


def levels(t: torch.Tensor) -> np.ndarray:
    return ((t + 1) * 127.5).round().permute(1, 2, 0).numpy()


@pytest.mark.isa
def test_image_to_tensor_is_bit_exact():
    for name in NAMES:
        img = example(name)
        assert torch.equal(image_to_tensor(img), old_tensor(img))
        assert image_to_tensor(img).is_contiguous()


@pytest.mark.isa
def test_tensor_to_image_is_bit_exact():
    """Against the torch arithmetic it replaces, on every rounding tie and out-of-range values."""
    ties = torch.tensor([(k + 0.5) / 127.5 - 1 for k in range(255)], dtype=torch.float32)
    values = torch.cat([ties, torch.randn(3 * 64 * 64 - 255, generator=torch.Generator().manual_seed(0)) * 0.8])
    t = values.reshape(3, 64, 64)
    old = ((t.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(np.asarray(tensor_to_image(t)), old)


@pytest.mark.isa
def test_model_size_jpegs_give_equal_tensors():
    sources = {name: jpeg(example(name)) for name in NAMES}
    old, new = old_inputs(sources), new_inputs(sources)
    for name in NAMES:
        assert torch.equal(new[name], old[name]), name


@pytest.mark.isa
@pytest.mark.parametrize("size_wh, orientation", [((768, 1024), None), ((1536, 2048), None), ((770, 1030), None),
                                                  ((1024, 768), 6)])
def test_large_jpegs_stay_within_the_letterbox_latitude(size_wh, orientation):
    pictures = {name: example(name) for name in NAMES}
    # A quarter-turned file with EXIF orientation 6 is upright once decoded: the same picture.
    stored = {name: img.resize(size_wh if orientation is None else size_wh[::-1], Image.BICUBIC)
              for name, img in pictures.items()}
    if orientation == 6:
        stored = {name: img.transpose(Image.Transpose.ROTATE_90) for name, img in stored.items()}
    sources = {name: jpeg(img, orientation) for name, img in stored.items()}
    old, new, lanczos = old_inputs(sources), new_inputs(sources), old_inputs(sources, Image.LANCZOS)
    for name in NAMES:
        ours, theirs, filter_choice = levels(new[name]), levels(old[name]), levels(lanczos[name])
        truth = np.asarray(pictures[name], dtype=np.float64)
        assert psnr(ours, theirs) >= min(40.0, psnr(filter_choice, theirs) - 2.0), name
        assert np.abs(ours - theirs).mean() <= 5.0, name
        assert psnr(ours, truth) >= psnr(theirs, truth) - 1.0, name


def test_reduced_decoding_keeps_the_frame_of_the_whole_picture():
    """The Letterbox maps the photo's own size (restoring the output's original size needs it)."""
    sources = {name: jpeg(example(name).resize((768, 1024), Image.BICUBIC)) for name in NAMES}
    made = prepare_inputs(sources["masked_model"], sources["pose"], sources["cloth"], size_hw=MODEL_HW)
    assert made.person_frame.source_size_wh == (768, 1024)
    assert made.person_frame.target_size_wh == (192, 256)


@pytest.mark.isa
def test_resize_bicubic_is_pillows_within_a_level():
    """Every letterbox a photo of another size shrinks into: within one level of Pillow's
    bicubic on all but a few values in a thousand (where the filter overshoots 255 or 0 and the
    two clip at different points), at an integer ratio (a 1/2 decode of a 768x1024 photo)
    everywhere; growing, it is Pillow's own."""
    photo = Image.open(REPO / "service" / "examples" / "person.jpg").convert("RGB")
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (700, 500, 3), dtype=np.uint8))
    for source in (photo, noise):
        for size in ((384, 512), (317, 978), (650, 700), (500, 333), (193, 257), (100, 120)):
            img = source.resize(size)
            left, top, right, bottom = Letterbox(size, (192, 256)).content_box
            box = (right - left, bottom - top)
            ours = np.asarray(resize_bicubic(img, box), dtype=np.int16)
            pillow = np.asarray(img.resize(box, Image.BICUBIC), dtype=np.int16)
            off = np.abs(ours - pillow)
            assert (off > 1).mean() <= 0.002, size
            if size == (384, 512) or box[0] > size[0]:
                assert off.max() <= 1 if box[0] < size[0] else off.max() == 0, size


def _jpeg_variant(img: Image.Image, **save) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **save)
    return buf.getvalue()


@pytest.mark.parametrize("size_wh", [(192, 256), (768, 1024), (1536, 2048), (3072, 4096), (770, 1030), (201, 263)])
@pytest.mark.parametrize("variant", [{"quality": 90}, {"quality": 75, "progressive": True},
                                     {"quality": 95, "subsampling": 0}, {"quality": 85, "subsampling": 1},
                                     {"quality": 90, "grey": True}])
def test_jpegs_decode_to_pillows_levels_through_simplejpeg(size_wh, variant):
    """decode_levels_to_fit decodes plain JPEGs with simplejpeg (libjpeg-turbo without Pillow):
    at every reduced scale, baseline or progressive, 4:2:0, 4:2:2 or 4:4:4, colour or grey,
    the levels are Pillow's bit for bit."""
    variant = dict(variant)
    picture = example("masked_model").resize(size_wh, Image.BICUBIC)
    data = _jpeg_variant(picture.convert("L") if variant.pop("grey", False) else picture, **variant)
    assert _turbo_levels_to_fit(data, (192, 256), None) is not None  # (not Pillow's path after all)
    ours, ours_wh = decode_levels_to_fit(data, "masked_model", (192, 256))
    img, img_wh = decode_to_fit(data, "masked_model", (192, 256))
    assert ours_wh == img_wh == size_wh
    assert torch.equal(ours, image_to_levels(img))


@pytest.mark.parametrize("kind", ["cmyk", "rotated", "upright exif", "xmp turn", "truncated", "png"])
def test_other_images_decode_through_pillow(kind):
    """What simplejpeg is not given (CMYK, any EXIF or XMP block, which may turn the picture, a
    PNG) or refuses (a truncated file) decodes, or fails, exactly as through Pillow."""
    picture = example("cloth").resize((384, 512), Image.BICUBIC)
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">' \
          b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>'
    data = {"cmyk": lambda: _jpeg_variant(picture.convert("CMYK"), quality=90),
            "rotated": lambda: jpeg(picture, orientation=6),
            "upright exif": lambda: jpeg(picture, orientation=1),
            "xmp turn": lambda: _jpeg_variant(picture, quality=90, xmp=xmp),
            "truncated": lambda: jpeg(picture)[:8_000],
            "png": lambda: _png(picture)}[kind]()
    assert _turbo_levels_to_fit(data, (192, 256), None) is None
    if kind == "truncated":
        with pytest.raises(ImageError, match="corrupt or truncated"):
            decode_levels_to_fit(data, "cloth", (192, 256))
        return
    if kind == "xmp turn":
        assert decode_to_fit(data, "cloth", (192, 256))[1] == (512, 384)  # Pillow turns it
    ours, ours_wh = decode_levels_to_fit(data, "cloth", (192, 256))
    img, img_wh = decode_to_fit(data, "cloth", (192, 256))
    assert ours_wh == img_wh
    assert torch.equal(ours, image_to_levels(img))


def test_the_pixel_limit_holds_on_either_path():
    data = _jpeg_variant(example("cloth").resize((768, 1024), Image.BICUBIC), quality=90)
    for decode in (decode_levels_to_fit, decode_to_fit):
        with pytest.raises(ImageTooLarge, match="768x1024"):
            decode(data, "cloth", (192, 256), max_pixels=500_000)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def test_16_bit_grey_is_rounded_to_8_bits_exactly_as_the_float_formula_did():
    """_16bit_to_8bit works in integers, strip by strip (the float64 way held 1 GB for 6324x6324): the
    same levels as round(v * 255 / 65535), over every 16-bit value, strips cut mid-image."""
    from model.images import decode as decode_module

    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    buf = io.BytesIO()
    Image.fromarray(values).save(buf, "PNG")
    strips = decode_module._RESCALE_PIXELS
    decode_module._RESCALE_PIXELS = 1000  # several strips of 3 rows, the last one short
    try:
        got = np.asarray(decode_image(buf.getvalue(), "cloth"))[:, :, 0]
    finally:
        decode_module._RESCALE_PIXELS = strips
    want = np.clip(values.astype(np.float64) / 65535.0 * 255.0 + 0.5, 0, 255).astype(np.uint8)
    assert np.array_equal(got, want)


def test_header_pixels_read_the_size_bits_and_decoding_cost_without_decoding():
    from model.images import WHITE, header_pixels
    from model.images.decode import WORK_BYTES_PER_PIXEL

    def encoded(image: Image.Image, fmt: str) -> bytes:
        buf = io.BytesIO()
        image.save(buf, fmt)
        return buf.getvalue()

    grey16 = header_pixels(encoded(Image.new("I;16", (3000, 2000)), "PNG"), (192, 256))
    assert (grey16.size_wh, grey16.bits_per_pixel, grey16.decoded_wh) == ((3000, 2000), 16, (3000, 2000))
    assert grey16.decode_bytes == 3000 * 2000 * (2 + WORK_BYTES_PER_PIXEL)
    rgb = header_pixels(encoded(Image.new("RGB", (100, 50)), "PNG"))
    assert (rgb.bits_per_pixel, rgb.decode_bytes) == (24, 100 * 50 * (4 + WORK_BYTES_PER_PIXEL))
    # A JPEG about to be letterboxed into 192x256 is decoded at 1/8 of 4000x3000 (at least twice the fit).
    photo = header_pixels(encoded(Image.new("RGB", (4000, 3000), WHITE), "JPEG"), (192, 256))
    assert photo.size_wh == (4000, 3000) and photo.decoded_wh == (500, 375)
    assert header_pixels(b"not an image") is None


# -- every common mode and format, EXIF, bad bytes -----------------------------------------------

@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_formats_decode_to_rgb(fmt):
    img = gradient()
    out = decode_image(saved(img, fmt, **({"quality": 95} if fmt != "PNG" else {})), "cloth")
    assert out.mode == "RGB" and out.size == img.size
    diff = np.abs(np.asarray(out, np.int16) - np.asarray(img, np.int16)).mean()
    assert diff < (0.01 if fmt == "PNG" else 4.0)


def test_rgba_is_flattened_on_the_background():
    img = Image.new("RGBA", (8, 8), (10, 20, 30, 0))
    img.putpixel((0, 0), (10, 20, 30, 255))
    white = decode_image(saved(img, "PNG"), "cloth")
    black = decode_image(saved(img, "PNG"), "pose", background=(0, 0, 0))
    assert white.getpixel((0, 0)) == (10, 20, 30) and white.getpixel((5, 5)) == (255, 255, 255)
    assert black.getpixel((5, 5)) == (0, 0, 0)


def test_la_l_p_and_cmyk_modes():
    la = Image.new("LA", (4, 4), (100, 255))
    assert decode_image(saved(la, "PNG"), "x").getpixel((1, 1)) == (100, 100, 100)
    grey = Image.new("L", (4, 4), 77)
    assert decode_image(saved(grey, "PNG"), "x").getpixel((1, 1)) == (77, 77, 77)
    pal = Image.new("RGB", (4, 4), (200, 10, 10)).convert("P", palette=Image.ADAPTIVE, colors=4)
    assert decode_image(saved(pal, "PNG"), "x").getpixel((1, 1)) == (200, 10, 10)
    transparent_p = Image.new("P", (4, 4), 0)
    transparent_p.putpalette([0, 0, 255] + [0] * 765)
    assert decode_image(saved(transparent_p, "PNG", transparency=0), "x").getpixel((1, 1)) == (255, 255, 255)
    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))  # pure red
    r, g, b = decode_image(saved(cmyk, "JPEG", quality=100), "x").getpixel((1, 1))
    assert r > 240 and g < 15 and b < 15


def test_16_bit_greyscale_is_rescaled_not_clipped():
    arr = np.full((4, 4), 32768, dtype=np.uint16)
    img = Image.fromarray(arr)
    out = decode_image(saved(img, "PNG"), "pose")
    assert out.getpixel((0, 0)) in ((127, 127, 127), (128, 128, 128))


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 10, 20))  # blue on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display needs a 90 degree clockwise turn
    out = decode_image(saved(img, "JPEG", exif=exif.tobytes(), quality=95), "masked_model")
    assert out.size == (20, 40)
    top = np.asarray(out)[2, 10]
    assert top[2] > 200 and top[0] < 60  # the left edge is now at the top


@pytest.mark.parametrize("data", [b"", b"not an image at all", saved(gradient(), "PNG")[:60]])
def test_corrupt_bytes_name_the_field(data):
    with pytest.raises(ImageError) as err:
        decode_image(data, "cloth")
    assert err.value.field == "cloth" and str(err.value).startswith("cloth: ")


def test_pixel_limit_is_checked_before_decoding():
    big = saved(Image.new("L", (3000, 3000)), "PNG")
    with pytest.raises(ImageTooLarge, match="over the limit"):
        decode_image(big, "masked_model", max_pixels=1_000_000)
