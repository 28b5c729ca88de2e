"""From what a shop has (a person photo, keypoints, maybe a parsing map) to the
two person-side inputs of the network: the masked model and the pose map.

The authors drew both at the published size, 192 x 256, with fixed pixel
sizes (circles of radius 4, limbs 8 wide, mask shapes in units of 10 pixels).
Drawn on a larger photo and scaled down afterwards they would come out thinner
than anything the model was trained on, so the photo, its parsing map and
the keypoints are first letterboxed to the model's size by one Letterbox and
the drawing happens there. ``PersonInputs.frame`` is that Letterbox: it maps
a result back to the photo's own size (``frame.restore``). Images already at
the model's size are drawn as they are, pixel for pixel as the authors'.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from .images import (BLACK, DEFAULT_MAX_PIXELS, MODEL_SIZE, WHITE, ImageError, ImageSource, Letterbox, decode_image,
                     decode_to_fit, letterbox_person, open_image)
from .keypoints import Keypoints, check_in_frame, parse_keypoints
from .masking import mask_person, mask_person_from_pose
from .pose_map import draw_pose_map

ASPECT_TOLERANCE = 0.02  # a parsing map may differ this much in aspect ratio from its photo (rounding)


class PersonInputs(NamedTuple):
    masked_model: Image.Image  # RGB, model size
    pose: Image.Image  # RGB, model size
    frame: Letterbox  # the person photo's frame -> the model's


def decode_parse(source: ImageSource, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """A human-parsing map (bytes or PIL) -> mode L, one label a pixel.

    Accepts greyscale and palette images (palette indices are the labels, as
    LIP and CIHP ship them) and RGB images whose three channels are equal;
    a colour-coded visualisation is refused, since its colours are not labels.
    """
    img = open_image(source, "parse", max_pixels=max_pixels)
    try:
        labels = np.asarray(img)
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError("parse", f"corrupt or truncated image ({exc})") from None
    if labels.ndim == 3:
        if labels.shape[2] in (3, 4) and (labels[..., 0] == labels[..., 1]).all() \
                and (labels[..., 0] == labels[..., 2]).all():
            labels = labels[..., 0]
        else:
            raise ImageError("parse", f"expected a one-channel label map (one label a pixel), got a "
                                      f"{img.mode} image with colours; save the parser's labels, not its "
                                      "visualisation")
    if labels.max(initial=0) > 255 or labels.min(initial=0) < 0:
        raise ImageError("parse", "labels must lie in 0..255")
    return Image.fromarray(labels.astype(np.uint8), mode="L")


def letterbox_labels(parse: Image.Image, frame: Letterbox) -> Image.Image:
    """A label map through ``frame``: nearest-neighbour scaling (labels stay
    labels) and background (0) padding."""
    left, top, right, bottom = frame.content_box
    if (right - left, bottom - top) == frame.target_size:
        return parse.resize(frame.target_size, Image.NEAREST)
    canvas = Image.new("L", frame.target_size, 0)
    canvas.paste(parse.resize((right - left, bottom - top), Image.NEAREST), (left, top))
    return canvas


def _check_parse_frame(parse: Image.Image, person_size: tuple[int, int]) -> None:
    (pw, ph), (w, h) = parse.size, person_size
    if abs((pw / ph) / (w / h) - 1) > ASPECT_TOLERANCE:
        raise ImageError("parse", f"{pw}x{ph} has not the person image's aspect ratio ({w}x{h}); "
                                  "the parsing map must be of the same photo")


def draw_inputs(person: ImageSource, keypoints: Keypoints | Any, parse: ImageSource | None = None, *,
                size: tuple[int, int] = MODEL_SIZE,
                max_pixels: int | None = DEFAULT_MAX_PIXELS) -> PersonInputs:
    """Masked model and pose map at ``size`` (H, W) from a person photo.

    ``keypoints``: a Keypoints, or anything parse_keypoints accepts, in the
    photo's pixel frame. ``parse``: its human-parsing map, or None for the
    keypoints-only masking. Raises KeypointsError or ImageError (``field`` names
    the input) for unusable inputs.
    """
    photo, photo_wh = decode_to_fit(person, "person", (size[1], size[0]), background=WHITE, max_pixels=max_pixels)
    if isinstance(keypoints, Keypoints):
        check_in_frame(keypoints, photo_wh)
    else:
        keypoints = parse_keypoints(keypoints, photo_wh)
    frame = Letterbox(photo_wh, (size[1], size[0]))
    points = keypoints.letterboxed(frame)
    boxed = frame.fit(photo, WHITE)
    if parse is None:
        masked = mask_person_from_pose(boxed, points)
    else:
        labels = decode_parse(parse, max_pixels=max_pixels)
        _check_parse_frame(labels, photo_wh)
        masked = mask_person(boxed, letterbox_labels(labels, frame), points)
    return PersonInputs(masked, draw_pose_map(points, frame.target_size), frame)


class IncompleteInputs(ValueError):
    """A mix of person-side inputs that does not determine the model's inputs,
    or determines them twice; ``fields`` names the inputs concerned."""

    def __init__(self, fields: tuple[str, ...], message: str):
        super().__init__(message)
        self.fields = fields
        self.message = message


class PersonForm(NamedTuple):
    """One valid mix of person-side inputs: all of ``required``, any of ``optional``, nothing else."""
    name: str
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()


# Every mix check_person_mix accepts, and only those (tests/test_person_inputs.py checks
# both ways); the service's OpenAPI request forms are generated from this table.
PERSON_FORMS = (
    PersonForm("masked model and pose map", ("masked_model", "pose")),
    PersonForm("photo and keypoints", ("person", "keypoints"), ("parse",)),
    PersonForm("masked model and keypoints", ("masked_model", "keypoints")),
    PersonForm("photo, keypoints and pose map", ("person", "keypoints", "pose"), ("parse",)),
)


def check_person_mix(given: set[str]) -> set[str]:
    """Which of masked_model and pose a mix of given input names leaves to draw;
    IncompleteInputs when the mix does not determine them or is ambiguous.
    Looks at names only, so a caller can refuse a mix before reading any bytes."""
    drawn = {"masked_model", "pose"} - given
    if "masked_model" in drawn and not {"person", "keypoints"} <= given:
        lacking = tuple(sorted({"person", "keypoints"} - given))
        raise IncompleteInputs(("masked_model", *lacking), "masked_model is missing: give it, or "
                               f"person and keypoints to draw it (missing: {', '.join(lacking)})")
    if "pose" in drawn and "keypoints" not in given:
        raise IncompleteInputs(("pose", "keypoints"), "pose is missing: give it, or keypoints to draw it")
    unused = sorted(given & {"person", "parse"} if "masked_model" not in drawn else set())
    if not drawn and "keypoints" in given:
        unused.append("keypoints")
    if unused:
        raise IncompleteInputs(tuple(unused), f"ambiguous: {', '.join(unused)} would be ignored, since "
                               "masked_model and pose are given; send one form of each input")
    return drawn


def person_images(*, masked_model: ImageSource | None = None, pose: ImageSource | None = None,
                  person: ImageSource | None = None, keypoints: Any = None, parse: ImageSource | None = None,
                  size: tuple[int, int] = MODEL_SIZE,
                  max_pixels: int | None = DEFAULT_MAX_PIXELS) -> PersonInputs:
    """The masked model and pose map at ``size`` from any mix that determines them.

    Given images are used as they are; a missing masked model is drawn from
    ``person`` + ``keypoints`` (+ ``parse``), a missing pose map from
    ``keypoints`` in the frame of ``person``, or of ``masked_model`` when that
    is given instead.
    Inputs that would be ignored make the mix ambiguous: IncompleteInputs.
    """
    given = {name for name, value in (("masked_model", masked_model), ("pose", pose), ("person", person),
                                      ("keypoints", keypoints), ("parse", parse)) if value is not None}
    drawn = check_person_mix(given)
    if not drawn:
        masked, skeleton, frame = letterbox_person(masked_model, pose, size=size, max_pixels=max_pixels)
        return PersonInputs(masked, skeleton, frame)
    if "masked_model" in drawn:
        drawn_inputs = draw_inputs(person, keypoints, parse, size=size, max_pixels=max_pixels)
        if pose is None:
            return drawn_inputs
        skeleton = decode_image(pose, "pose", background=BLACK, max_pixels=max_pixels)
        return PersonInputs(drawn_inputs.masked_model, drawn_inputs.frame.apply(skeleton, BLACK), drawn_inputs.frame)
    # Only the pose map is drawn: in the frame of the given masked model.
    photo, photo_wh = decode_to_fit(masked_model, "masked_model", (size[1], size[0]), background=WHITE,
                                    max_pixels=max_pixels)
    points = keypoints if isinstance(keypoints, Keypoints) else parse_keypoints(keypoints, photo_wh)
    check_in_frame(points, photo_wh)
    frame = Letterbox(photo_wh, (size[1], size[0]))
    return PersonInputs(frame.fit(photo, WHITE), draw_pose_map(points.letterboxed(frame), frame.target_size), frame)
