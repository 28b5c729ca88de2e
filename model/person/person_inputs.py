"""From what a shop has (a person photo, keypoints, maybe a parsing map) to the
two person-side inputs of the network: the masked model and the pose map.

The authors drew both at the published size, 192 x 256, with fixed pixel
sizes (circles of radius 4, limbs 8 wide, mask shapes in units of 10 pixels).
Drawn on a larger photo and scaled down afterwards they would come out thinner
than anything the model was trained on, so the photo, its parsing map and
the keypoints are first brought to the model's size by one frame and the
drawing happens there. For a person photo that frame is a ``Crop`` around the
person, framed as VITON frames its people (framing.py), padded with VITON's
background where it leaves the photo; ``PersonInputs.frame`` is it, and its
``box`` is where the model looks in the photo. A result goes back into the
photo itself through ``PersonInputs.composite`` (when the photo is kept):
only the region the masked model blacks out (``PersonInputs.mask``) changes.
Images already at the model's size are drawn as they are, pixel for pixel as
the authors'. Without a photo (a masked model given) the frame is a
``Letterbox``, as it always was.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..images import (BLACK, DEFAULT_MAX_PIXELS, MODEL_SIZE_HW, WHITE, Composite, Crop, ImageError, ImageSource,
                      Letterbox, decode_image, decode_to_fit, feathered_mask, image_to_levels, letterbox_person,
                      open_image, tensor_to_image)
from ..images.crop import VITON_BACKGROUND
from .detect import Detection, check_person, get_detector
from .framing import check_person_size, person_crop
from .keypoints import Keypoints, check_in_frame, parse_keypoints
from .masking import mask_person, mask_person_from_pose, masked_region
from .pose_map import draw_pose_map

ASPECT_TOLERANCE = 0.02  # a parsing map may differ this much in aspect ratio from its photo (rounding)


@dataclass(frozen=True)
class PersonInputs:
    """The person side at model size, as the network gets it: (3, H, W) uint8 levels."""
    masked_model_levels: torch.Tensor
    pose_levels: torch.Tensor
    frame: Letterbox | Crop  # the person image's frame -> the model's (a Crop: a photo, framed)
    keypoints: Keypoints | None = None  # those used, in the photo's pixels (None: both images given)
    detection: Detection | None = None  # when the keypoints were found in the photo
    mask: torch.Tensor | None = None  # (H, W) uint8, the model's frame: what a composite replaces (a photo's)
    composite: Composite | None = None  # the photo kept, to put a result back into (``keep_photo``)

    @property
    def box(self) -> tuple[int, int, int, int] | None:
        """Where the model looks in the photo (left, top, right, bottom; photo pixels, upright)."""
        return self.frame.box if isinstance(self.frame, Crop) else None

    @property
    def output_frame(self) -> Letterbox | Crop | Composite:
        """What maps a result back to the person's own size (``output_image``): into the photo when kept."""
        return self.composite or self.frame

    @property
    def masked_model(self) -> Image.Image:
        """8-bit RGB, model size (to look at, encode or compare)."""
        return tensor_to_image(self.masked_model_levels)

    @property
    def pose(self) -> Image.Image:
        return tensor_to_image(self.pose_levels)


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


def _check_parse_frame(parse: Image.Image, person_size_wh: tuple[int, int]) -> None:
    (pw, ph), (w, h) = parse.size, person_size_wh
    if abs((pw / ph) / (w / h) - 1) > ASPECT_TOLERANCE:
        raise ImageError("parse", f"{pw}x{ph} has not the person image's aspect ratio ({w}x{h}); "
                                  "the parsing map must be of the same photo")


def draw_inputs(person: ImageSource, keypoints: Keypoints | Any, parse: ImageSource | None = None, *,
                size_hw: tuple[int, int] = MODEL_SIZE_HW, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                silhouette: Image.Image | None = None, framing: bool = True,
                keep_photo: bool = False) -> PersonInputs:
    """Masked model and pose map at ``size_hw`` from a person photo, and the mask of what they black out.

    ``keypoints``: a Keypoints, or anything parse_keypoints accepts, in the
    photo's pixel frame. ``parse``: its human-parsing map, or None for the
    keypoints-only masking. ``silhouette`` (mode L, the photo's size, 255 =
    person): the keypoints-only masking blacks out nothing outside it, so the
    background stays as it is. ``framing``: cut the person out as VITON frames
    people (False: the whole photo letterboxed, as before framing). ``keep_photo``:
    keep it to composite results into (``PersonInputs.composite``). Raises
    KeypointsError or ImageError (``field`` names the input) for unusable inputs.
    """
    model_wh = (size_hw[1], size_hw[0])
    if framing:  # the box is not known before the keypoints: decoded whole
        photo = decode_image(person, "person", background=WHITE, max_pixels=max_pixels)
        photo_wh = photo.size
    else:
        photo, photo_wh = decode_to_fit(person, "person", model_wh, background=WHITE, max_pixels=max_pixels)
    if isinstance(keypoints, Keypoints):
        check_in_frame(keypoints, photo_wh)
    else:
        keypoints = parse_keypoints(keypoints, photo_wh)
    frame = person_crop(keypoints, photo_wh, model_wh) if framing else Letterbox(photo_wh, model_wh)
    points = keypoints.letterboxed(frame)
    boxed = frame.fit(photo, VITON_BACKGROUND if framing else WHITE)  # what the training data has around people
    if parse is None:
        masked = mask_person_from_pose(boxed, points)
        region = masked_region(frame.target_size_wh, points)
        if silhouette is not None:
            kept = frame.fit_labels(silhouette)
            masked = Image.composite(masked, boxed, kept)
            region = Image.composite(region, kept, kept)  # 255 only where both are
    else:
        labels = decode_parse(parse, max_pixels=max_pixels)
        _check_parse_frame(labels, photo_wh)
        boxed_labels = frame.fit_labels(labels)
        masked = mask_person(boxed, boxed_labels, points)
        region = masked_region(frame.target_size_wh, points, boxed_labels)
    mask = feathered_mask(region)
    composite = Composite(photo, frame, mask, image_to_levels(boxed)) if keep_photo and framing else None
    return PersonInputs(image_to_levels(masked), image_to_levels(draw_pose_map(points, frame.target_size_wh)), frame,
                        keypoints, mask=mask, composite=composite)


class IncompleteInputs(ValueError):
    """A mix of person-side inputs that does not determine the model's inputs
    (``kind`` "incomplete"), or determines them twice ("ambiguous");
    ``fields`` names the inputs concerned."""

    def __init__(self, kind: str, fields: tuple[str, ...], message: str):
        super().__init__(message)
        self.kind = kind
        self.fields = fields
        self.message = message


@dataclass(frozen=True)
class PersonMix:
    """One valid form of the person side: the inputs it needs, those it may add, and what happens."""
    required: frozenset[str]
    optional: frozenset[str]
    summary: str

    @property
    def allowed(self) -> frozenset[str]:
        return self.required | self.optional


def _mix(required: str, optional: str, summary: str) -> PersonMix:
    return PersonMix(frozenset(required.split()), frozenset(optional.split()), summary)


# Every valid person-side mix (the service's API document lists these). Order is preference:
# when a mix has inputs to spare, the first mix it contains says which ones would be ignored,
# so given images win over what would be drawn.
PERSON_MIXES = (
    _mix("masked_model pose", "", "both images used as they are"),
    _mix("masked_model keypoints", "", "the pose map drawn from the keypoints in the masked model's frame"),
    _mix("person keypoints", "parse pose", "the masked model drawn from the photo and keypoints (with `parse`: "
         "the parsing-map masking); the pose map drawn from the keypoints unless given"),
    _mix("person", "parse pose", "the keypoints detected in the photo, then drawn as for person + keypoints"),
)
PERSON_INPUTS = frozenset().union(*(m.allowed for m in PERSON_MIXES))


def check_person_mix(given: set[str]) -> PersonMix:
    """The mix ``given`` (names of the person-side inputs sent) is, or IncompleteInputs
    naming what is missing or what would be ignored. Looks at names only, so a caller
    can refuse a mix before reading any bytes."""
    given = frozenset(given) & PERSON_INPUTS
    contained = [m for m in PERSON_MIXES if m.required <= given]
    for mix in contained:
        if given <= mix.allowed:
            return mix
    if contained:
        best = min(contained, key=lambda m: len(given - m.allowed))
        unused = tuple(sorted(given - best.allowed))
        raise IncompleteInputs("ambiguous", unused, f"ambiguous: {', '.join(unused)} would be ignored, since "
                               f"{' and '.join(sorted(best.required))} are given; send one form of each input")
    # Incomplete: the mixes that would use everything given, closest first.
    fitting = [m for m in PERSON_MIXES if given <= m.allowed] or list(PERSON_MIXES)
    fewest = min(len(m.required - given) for m in fitting)
    closest = [m for m in fitting if len(m.required - given) == fewest]
    lacking = tuple(dict.fromkeys(f for m in closest for f in sorted(m.required - given)))
    forms = " or ".join(f"{' + '.join(sorted(m.required - given))} (for {' + '.join(sorted(m.required))})"
                        for m in closest)
    raise IncompleteInputs("incomplete", lacking, f"incomplete person side: add {forms}; missing: "
                           f"{', '.join(lacking)}")


def person_images(*, masked_model: ImageSource | None = None, pose: ImageSource | None = None,
                  person: ImageSource | None = None, keypoints: Any = None, parse: ImageSource | None = None,
                  size_hw: tuple[int, int] = MODEL_SIZE_HW, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                  silhouette: bool = False, framing: bool = True, keep_photo: bool = False) -> PersonInputs:
    """The masked model and pose map at ``size_hw`` from any mix that determines them (PERSON_MIXES).

    Given images are used as they are; a missing masked model is drawn from
    ``person`` + ``keypoints`` (+ ``parse``), a missing pose map from
    ``keypoints`` in the frame of ``person``, or of ``masked_model`` when that
    is given instead. A ``person`` with no ``keypoints``: they are detected in
    it (DetectionError when no usable person is found). ``silhouette``: the
    keypoints-only masking leaves the background found by segmentation as it is.
    ``framing`` and ``keep_photo``: as for ``draw_inputs``, for a ``person`` photo.
    Inputs that would be ignored make the mix ambiguous: IncompleteInputs.
    """
    given = {name for name, value in (("masked_model", masked_model), ("pose", pose), ("person", person),
                                      ("keypoints", keypoints), ("parse", parse)) if value is not None}
    check_person_mix(given)
    if masked_model is not None and pose is not None:
        masked, skeleton, frame = letterbox_person(masked_model, pose, size_hw=size_hw, max_pixels=max_pixels)
        return PersonInputs(masked, skeleton, frame)
    if masked_model is not None:
        # Only the pose map is drawn: in the frame of the given masked model.
        model_wh = (size_hw[1], size_hw[0])
        photo, photo_wh = decode_to_fit(masked_model, "masked_model", model_wh, background=WHITE,
                                        max_pixels=max_pixels)
        points = keypoints if isinstance(keypoints, Keypoints) else parse_keypoints(keypoints, photo_wh)
        check_in_frame(points, photo_wh)
        frame = Letterbox(photo_wh, model_wh)
        skeleton = draw_pose_map(points.letterboxed(frame), frame.target_size_wh)
        return PersonInputs(frame.fit_levels(photo, WHITE), image_to_levels(skeleton), frame, points)
    photo = decode_image(person, "person", background=WHITE, max_pixels=max_pixels)
    mask, detection = None, None
    silhouette = silhouette and parse is None  # the parsing map's masking keeps the background anyway
    if keypoints is None:
        detection = get_detector().detect(photo, silhouette=silhouette)
        check_person(detection.keypoints)
        check_person_size(detection.keypoints, photo.size)
        keypoints, mask = detection.keypoints, detection.silhouette
    elif silhouette:
        mask = get_detector().segment(photo)
    drawn = draw_inputs(photo, keypoints, parse, size_hw=size_hw, max_pixels=max_pixels, silhouette=mask,
                        framing=framing, keep_photo=keep_photo)
    if pose is not None:
        skeleton = decode_image(pose, "pose", background=BLACK, max_pixels=max_pixels)
        drawn = replace(drawn, pose_levels=image_to_levels(drawn.frame.apply(skeleton, BLACK)))
    return replace(drawn, detection=detection)
