"""Images in and out of the network: bytes or PIL images <-> normalised tensors.

Geometry policy (letterboxing): the network wants H x W (256 x 192 as
published). An input of another size or aspect ratio is scaled, keeping its
aspect ratio, until it fits inside H x W, and centred on a canvas of the
model's size. The person is never stretched. The pad colour is what the
training data has around a person: white for photos (masked model, cloth),
black for the pose map (OpenPose canvases are black). The masked model and
the pose map are drawn in the same frame, so they get the same transform;
the result can be returned at model size or mapped back (cropped and
scaled) to the person image's original size.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Union

import numpy as np
import simplejpeg
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

MODEL_SIZE = (256, 192)  # H, W as published
WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
# Decompression-bomb guard for callers that set no limit of their own.
DEFAULT_MAX_PIXELS = 40_000_000

ImageSource = Union[bytes, bytearray, memoryview, Image.Image]


class ImageError(ValueError):
    """An input that is not a usable image; ``field`` names which input."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class ImageTooLarge(ImageError):
    """More pixels than allowed, detected from the header before decoding."""


def _to_rgb(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16-bit and float greyscale: rescale to 8 bits instead of clipping.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        img = Image.fromarray(arr)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, background)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img if img.mode == "RGB" else img.convert("RGB")


def open_image(source: ImageSource, field: str, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Bytes of any format Pillow reads (or a PIL image), opened but not decoded.

    Raises ImageError naming ``field`` for anything that is not an image,
    ImageTooLarge when the header announces more than ``max_pixels``.
    """
    if isinstance(source, Image.Image):
        img = source
    else:
        if not source:
            raise ImageError(field, "empty file")
        try:
            img = Image.open(io.BytesIO(bytes(source)))
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
            raise ImageError(field, "not an image Pillow can read") from None
    width, height = img.size
    if width < 1 or height < 1:
        raise ImageError(field, "image has no pixels")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLarge(field, f"{width}x{height} is {width * height} pixels, over the limit of {max_pixels}")
    return img


def decode_image(source: ImageSource, field: str, *, background=WHITE,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Bytes of any format Pillow reads (or a PIL image) -> upright 8-bit RGB.

    EXIF orientation is applied; transparency is flattened onto ``background``.
    Raises as ``open_image`` does, and ImageError for a corrupt or truncated image.
    """
    return _upright_rgb(open_image(source, field, max_pixels=max_pixels), field, background)


def decode_to_fit(source: ImageSource, field: str, target_wh: tuple[int, int], *, background=WHITE,
                  max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[Image.Image, tuple[int, int]]:
    """As ``decode_image``, for an image about to be letterboxed into ``target_wh`` (W, H):
    a JPEG at least 2 x REDUCED_DECODE_MARGIN times larger is decoded by libjpeg at 1/2, 1/4
    or 1/8 scale, never below REDUCED_DECODE_MARGIN times the size it will be scaled to, so
    the letterbox's own resize still does the last step. Returns the image and the upright
    size (W, H) of the whole picture, the frame a Letterbox maps (``Letterbox.fit``).
    """
    img, full_wh = _open_to_fit(source, field, target_wh, max_pixels)
    return _upright_rgb(img, field, background), full_wh


def decode_levels_to_fit(source: ImageSource, field: str, target_wh: tuple[int, int], *, background=WHITE,
                         max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[torch.Tensor, tuple[int, int]]:
    """``decode_to_fit`` as (3, H, W) uint8 levels in pixel order."""
    decoded = _turbo_levels_to_fit(source, target_wh, max_pixels)
    if decoded is not None:
        return decoded
    img, full_wh = _open_to_fit(source, field, target_wh, max_pixels)
    return image_to_levels(_upright_rgb(img, field, background)), full_wh


def _open_to_fit(source: ImageSource, field: str, target_wh: tuple[int, int],
                 max_pixels: int | None) -> tuple[Image.Image, tuple[int, int]]:
    """Opened, not decoded, at the reduced scale ``decode_to_fit`` decodes at; and the upright full size."""
    img = open_image(source, field, max_pixels=max_pixels)
    width, height = img.size
    swapped = _orientation(img) in _QUARTER_TURNS
    full_wh = (height, width) if swapped else (width, height)
    reduced_wh = _reduced_decode_size((width, height), full_wh, target_wh)
    if reduced_wh is not None:  # only JPEG files implement draft; for every other source it changes nothing
        img.draft(None, reduced_wh)
    return img, full_wh


def _reduced_decode_size(stored_wh: tuple[int, int], upright_wh: tuple[int, int],
                         target_wh: tuple[int, int]) -> tuple[int, int] | None:
    """The size (as stored) a JPEG may be decoded down to for a letterbox into ``target_wh``:
    REDUCED_DECODE_MARGIN times the size it will be scaled to; None when it is not larger."""
    scale = min(target_wh[0] / upright_wh[0], target_wh[1] / upright_wh[1]) * REDUCED_DECODE_MARGIN
    return (math.ceil(stored_wh[0] * scale), math.ceil(stored_wh[1] * scale)) if scale < 1 else None


def _turbo_levels_to_fit(source: ImageSource, target_wh: tuple[int, int],
                         max_pixels: int | None) -> tuple[torch.Tensor, tuple[int, int]] | None:
    """A plain JPEG (colour or grey, no APP1 block, so no EXIF or XMP turn) decoded by simplejpeg
    at the scale Pillow's draft picks: the same libjpeg-turbo with the same settings, so the same
    pixels (tests/test_images_decode.py), at a third to a half of Pillow's CPU time (no 4-byte
    pixels, no decoding loop or header parsing in Python). None for anything else, and for
    whatever simplejpeg refuses: Pillow then decodes it, or says what is wrong with it."""
    if isinstance(source, Image.Image) or not _plain_jpeg(source):
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(source)
    except ValueError:
        return None
    pixel_limit = min(limit for limit in (max_pixels, Image.MAX_IMAGE_PIXELS, math.inf) if limit)
    if colorspace not in ("YCbCr", "Gray", "RGB") or width < 1 or height < 1 or width * height > pixel_limit:
        return None  # and Pillow's refusals of too many pixels stay Pillow's
    reduced_wh = _reduced_decode_size((width, height), (width, height), target_wh)
    reduction = 1 if reduced_wh is None else _draft_reduction((width, height), reduced_wh)
    size_wh = (-(-width // reduction), -(-height // reduction))
    try:
        pixels = simplejpeg.decode_jpeg(source, "RGB", min_width=size_wh[0], min_height=size_wh[1])
    except ValueError:
        return None
    if pixels.shape[:2] != (size_wh[1], size_wh[0]):  # another of libjpeg-turbo's scales than Pillow's
        return None
    return torch.from_numpy(pixels).permute(2, 0, 1), (width, height)


def _draft_reduction(size_wh: tuple[int, int], requested_wh: tuple[int, int]) -> int:
    """The reduction Pillow's JPEG ``draft`` picks: the largest of 8, 4, 2 and 1 that leaves at
    least ``requested_wh``."""
    fits = min(size_wh[0] // requested_wh[0], size_wh[1] // requested_wh[1])
    return next(s for s in (8, 4, 2, 1) if fits >= s)


def _plain_jpeg(data: bytes | bytearray | memoryview) -> bool:
    """JPEG bytes with no APP1 block (EXIF or XMP, where an orientation would be) before the image data."""
    data = memoryview(data)
    if data[:3] != b"\xff\xd8\xff":
        return False
    at = 2
    while at + 4 <= len(data) and data[at] == 0xFF:
        marker = data[at + 1]
        if marker == 0xFF:  # a fill byte
            at += 1
        elif marker == 0xDA:  # start of scan: the image data follows
            return True
        elif marker == 0xE1:
            return False
        else:
            at += 2 + (data[at + 2] << 8 | data[at + 3])
    return False


# libjpeg's reduced decoding averages in the DCT domain, the letterbox resizes bicubically:
# decoding at twice the final size at least keeps the two within a few levels (tests/test_images_decode.py).
REDUCED_DECODE_MARGIN = 2
_ORIENTATION_TAG = 0x0112
_QUARTER_TURNS = (5, 6, 7, 8)


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(_ORIENTATION_TAG, 1))
    except (OSError, ValueError, SyntaxError, TypeError):
        return 1  # an unreadable EXIF block: ImageOps.exif_transpose would not turn it either


def _upright_rgb(img: Image.Image, field: str, background) -> Image.Image:
    try:
        img.load()
        if _orientation(img) != 1:  # exif_transpose copies even an upright image
            img = ImageOps.exif_transpose(img)
        return _to_rgb(img, background)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageError(field, f"corrupt or truncated image ({exc})") from None


def image_to_levels(img: Image.Image) -> torch.Tensor:
    """8-bit RGB -> (3, H, W) uint8 levels, a channels-last view of one copy of the pixels
    (the batch stacks into the layout the engine runs, and nothing is transposed here)."""
    return torch.from_numpy(np.array(img if img.mode == "RGB" else img.convert("RGB"))).permute(2, 0, 1)


def stack_levels(levels: list[torch.Tensor]) -> torch.Tensor:
    """(3, H, W) levels -> an (N, 3, H, W) batch in pixel order, as they are: a copy of each
    image's bytes (torch.stack of channels-last views would transpose each into NCHW, twelve
    times slower at 256x192; the engine lays the batch out as it runs anyway)."""
    return torch.stack([t.permute(1, 2, 0) for t in levels]).permute(0, 3, 1, 2)


# A decoded picture: an 8-bit RGB image, or its (3, H, W) uint8 levels.
Picture = Union[Image.Image, torch.Tensor]


def picture_size(picture: Picture) -> tuple[int, int]:
    """(W, H)"""
    return picture.size if isinstance(picture, Image.Image) else (picture.shape[2], picture.shape[1])


def picture_levels(picture: Picture) -> torch.Tensor:
    return image_to_levels(picture) if isinstance(picture, Image.Image) else picture


def resize_levels(picture: Picture, size_wh: tuple[int, int]) -> torch.Tensor:
    """Pillow's bicubic resize (antialiased, a = -0.5) as (3, H, W) uint8 levels in pixel order.
    Shrinking, it runs as torch's 8-bit kernel, vectorised where Pillow's is not: six times
    faster, and within one level of Pillow but for a few pixels in a thousand where the filter
    overshoots the 8-bit range (tests/test_images_decode.py). Growing stays with Pillow."""
    width, height = picture_size(picture)
    if size_wh[0] > width or size_wh[1] > height:
        image = picture if isinstance(picture, Image.Image) else tensor_to_image(picture)
        return image_to_levels(image.resize(size_wh, Image.BICUBIC))
    # interpolate(mode="bicubic", antialias=True) itself, into a pixel-order tensor: interpolate
    # answers a planar one, which a copy would have to transpose (half the resize's time again).
    resized = torch.empty((size_wh[1], size_wh[0], 3), dtype=torch.uint8).permute(2, 0, 1)
    torch._C._nn._upsample_bicubic2d_aa(picture_levels(picture)[None], [size_wh[1], size_wh[0]], False, None, None,
                                        out=resized[None])
    return resized


def resize_bicubic(img: Image.Image, size_wh: tuple[int, int]) -> Image.Image:
    """``resize_levels`` as an image."""
    return tensor_to_image(resize_levels(img, size_wh))


@dataclass(frozen=True)
class Letterbox:
    """Fits a source of ``source_size`` (W, H) into ``target_size`` (W, H)."""
    source_size: tuple[int, int]
    target_size: tuple[int, int]

    @property
    def scale(self) -> float:
        return min(self.target_size[0] / self.source_size[0], self.target_size[1] / self.source_size[1])

    @property
    def content_box(self) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the source inside the target."""
        w = max(1, round(self.source_size[0] * self.scale))
        h = max(1, round(self.source_size[1] * self.scale))
        left = (self.target_size[0] - w) // 2
        top = (self.target_size[1] - h) // 2
        return left, top, left + w, top + h

    def apply(self, img: Image.Image, fill=WHITE) -> Image.Image:
        """``img`` of another size than the source is first scaled to it (a pose map of the same frame)."""
        if img.size != self.source_size:
            img = resize_bicubic(img, self.source_size)
        return self.fit(img, fill)

    def fit(self, img: Image.Image, fill=WHITE) -> Image.Image:
        """``img`` shows the whole source frame at any resolution (``decode_to_fit``): one resize
        into the content box; the same as ``apply`` for an image of the source's size."""
        if img.size == self.target_size:
            return img
        return tensor_to_image(self.fit_levels(img, fill))

    def fit_levels(self, picture: Picture, fill=WHITE) -> torch.Tensor:
        """``fit`` as (3, H, W) uint8 levels in pixel order, with no image in between (each
        conversion of Pillow's 4-byte pixels costs as much as a resize's last step)."""
        left, top, right, bottom = self.content_box
        if picture_size(picture) == (right - left, bottom - top):
            content = picture_levels(picture)
        else:
            content = resize_levels(picture, (right - left, bottom - top))
        if content.shape[1:] == (self.target_size[1], self.target_size[0]) \
                and content.permute(1, 2, 0).is_contiguous():
            return content
        canvas = torch.empty((self.target_size[1], self.target_size[0], 3), dtype=torch.uint8)
        if content.shape[1:] != canvas.shape[:2]:
            canvas[:] = torch.tensor(fill, dtype=torch.uint8)
        canvas[top:bottom, left:right] = content.permute(1, 2, 0)
        return canvas.permute(2, 0, 1)

    def apply_points(self, xy: np.ndarray) -> np.ndarray:
        """Maps (N, 2) pixel coordinates of the source frame into the target frame."""
        left, top, right, bottom = self.content_box
        sx = (right - left) / self.source_size[0]
        sy = (bottom - top) / self.source_size[1]
        return np.asarray(xy, dtype=np.float64) * [sx, sy] + [left, top]

    def restore(self, img: Image.Image) -> Image.Image:
        """A model-size image back to the source frame and size."""
        if self.source_size == self.target_size:
            return img
        return img.crop(self.content_box).resize(self.source_size, Image.BICUBIC)


def levels_to_tensor(levels: torch.Tensor) -> torch.Tensor:
    """8-bit levels (..., 3, H, W) uint8 -> the network's float32 in [-1, 1], as x / 127.5 - 1
    (on the levels' device: the engine converts a batch where it runs)."""
    return levels.to(torch.float32).div_(127.5).sub_(1.0)


def tensor_to_levels(t: torch.Tensor) -> torch.Tensor:
    """Network values (..., 3, H, W) -> uint8 levels: clamp to [-1, 1], (y + 1) * 127.5, rounded
    half to even; inverts levels_to_tensor exactly. On the values' device."""
    return t.to(torch.float32).clamp(-1.0, 1.0).add_(1.0).mul_(127.5).round_().to(torch.uint8)


def as_levels(t: torch.Tensor) -> torch.Tensor:
    """Levels as they are; network values quantised."""
    return t if t.dtype == torch.uint8 else tensor_to_levels(t)


def image_to_tensor(img: Image.Image) -> torch.Tensor:
    """8-bit RGB -> (3, H, W) float32 in [-1, 1], as x / 127.5 - 1."""
    return levels_to_tensor(image_to_levels(img)).contiguous()


def tensor_to_image(t: torch.Tensor) -> Image.Image:
    """(3, H, W) network output (or its uint8 levels) -> 8-bit RGB."""
    return Image.fromarray(as_levels(t.detach().cpu()).permute(1, 2, 0).contiguous().numpy())


@dataclass
class TryOnInputs:
    """One request's three model inputs, each (3, H, W) uint8 levels (the engine normalises a
    batch to [-1, 1] where it runs: a quarter of float32's bytes to hash, queue and copy), and
    the transform that maps the person's frame to the model's."""
    masked_model: torch.Tensor
    pose: torch.Tensor
    cloth: torch.Tensor
    person_frame: Letterbox

    def batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(pose, masked_model, cloth), each a batch of one in [-1, 1]: the network's own inputs."""
        return tuple(levels_to_tensor(t.unsqueeze(0)).contiguous()
                     for t in (self.pose, self.masked_model, self.cloth))


def letterbox_person(masked_model: ImageSource, pose: ImageSource, *, size: tuple[int, int] = MODEL_SIZE,
                     max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[torch.Tensor, torch.Tensor, Letterbox]:
    """Masked model and pose map at ``size`` (H, W) through one transform, as (3, H, W) levels.

    A pose map of another size than the masked model is taken to span the same
    frame and scaled to it first, so both get the same transform.
    """
    target_wh = (size[1], size[0])
    person, person_wh = decode_levels_to_fit(masked_model, "masked_model", target_wh, background=WHITE,
                                             max_pixels=max_pixels)
    frame = Letterbox(person_wh, target_wh)
    skeleton, skeleton_wh = decode_levels_to_fit(pose, "pose", target_wh, background=BLACK, max_pixels=max_pixels)
    if skeleton_wh == person_wh:
        boxed_skeleton = frame.fit_levels(skeleton, BLACK)
    else:  # rare: scaled to the person's size at full resolution first, as always
        boxed_skeleton = image_to_levels(frame.apply(decode_image(pose, "pose", background=BLACK,
                                                                  max_pixels=max_pixels), BLACK))
    return frame.fit_levels(person, WHITE), boxed_skeleton, frame


def assemble_inputs(masked_model: Picture, pose: Picture, frame: Letterbox, cloth: ImageSource, *,
                    max_pixels: int | None = DEFAULT_MAX_PIXELS) -> TryOnInputs:
    """Model-size person images, as images or levels (and their frame), plus the garment -> levels."""
    garment, garment_wh = decode_levels_to_fit(cloth, "cloth", frame.target_size, background=WHITE,
                                               max_pixels=max_pixels)
    return TryOnInputs(
        masked_model=picture_levels(masked_model),
        pose=picture_levels(pose),
        cloth=Letterbox(garment_wh, frame.target_size).fit_levels(garment, WHITE),
        person_frame=frame,
    )


def prepare_inputs(masked_model: ImageSource, pose: ImageSource, cloth: ImageSource, *,
                   size: tuple[int, int] = MODEL_SIZE,
                   max_pixels: int | None = DEFAULT_MAX_PIXELS) -> TryOnInputs:
    """Decodes and letterboxes the three inputs to ``size`` (H, W)."""
    person, skeleton, frame = letterbox_person(masked_model, pose, size=size, max_pixels=max_pixels)
    return assemble_inputs(person, skeleton, frame, cloth, max_pixels=max_pixels)


def output_image(t: torch.Tensor, frame: Letterbox | None = None, size: str = "model") -> Image.Image:
    """The result as 8-bit RGB at model size, or mapped back to the person's original size."""
    if size not in ("model", "original"):
        raise ValueError(f"size must be 'model' or 'original', not {size!r}")
    img = tensor_to_image(t)
    return frame.restore(img) if size == "original" and frame is not None else img


def psnr(ours: np.ndarray, reference: np.ndarray) -> float:
    """PSNR in dB between two 8-bit images (any integer or float arrays on the 0..255 scale);
    inf when identical. The measure for comparing outputs that went through a lossy codec
    or float kernels whose rounding differs between instruction sets."""
    diff = np.asarray(ours, dtype=np.float64) - np.asarray(reference, dtype=np.float64)
    mse = float(np.mean(diff ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def to_8bit(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) network outputs -> (N, H, W, 3) uint8, as the service encodes them."""
    return as_levels(images.detach().cpu()).permute(0, 2, 3, 1).contiguous().numpy()


def psnr_8bit(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """PSNR in dB of the 8-bit images of two network outputs; inf when identical."""
    return psnr(to_8bit(ours), to_8bit(reference))


ENCODE_FORMATS = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}
MEDIA_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}


def encode_image(img: Image.Image, fmt: str = "jpeg", quality: int = 90) -> bytes:
    """RGB image -> bytes of ``fmt`` (jpeg, png or webp)."""
    if fmt not in ENCODE_FORMATS:
        raise ValueError(f"format must be one of {sorted(ENCODE_FORMATS)}, not {fmt!r}")
    buf = io.BytesIO()
    options = {"quality": quality} if fmt in ("jpeg", "webp") else {"optimize": False}
    img.save(buf, format=ENCODE_FORMATS[fmt], **options)
    return buf.getvalue()
