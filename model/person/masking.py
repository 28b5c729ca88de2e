"""The masked-model image: the person with the upper garment and the body
around it blacked out, drawn as the DAFlow authors' data script drew it.

Two variants, as theirs: from the person photo, its human-parsing map and the
keypoints (``mask_person``), and from the photo and keypoints alone
(``mask_person_from_pose``, for callers with no parser). All drawing is in
black with PIL's ImageDraw, which they used, in the person image's frame.

Where their script would draw garbage from a missing point (a shoulder at
(0, 0) pulls a 70-pixel-wide line into the image corner), this module refuses
with KeypointsError instead: both shoulders are required, a missing neck is
taken as the midpoint of the shoulders, and hips are rescaled only when both
are present. Other missing points are left out as their script leaves them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .keypoints import (L_ELBOW, L_HIP, L_SHOULDER, L_WRIST, NECK, R_ELBOW, R_HIP, R_SHOULDER,
                        R_WRIST, Keypoints, require)

R = 10  # the script's unit of size, in pixels at 192 x 256

# LIP / CIHP labels of the human-parsing map.
HEAD_LABELS = (2, 4, 13)  # hair, sunglasses, face
LOWER_BODY_LABELS = (9, 12, 16, 17, 18, 19)  # pants, skirt, legs, shoes
UPPER_GARMENT_LABELS = (5, 6, 7)  # upper clothes, dress, coat
BLACK = (0, 0, 0)


@dataclass(frozen=True)
class _Shape:
    """Sizes that differ between the two variants (in units of R)."""
    shoulder_line: int  # width of the line between the shoulders
    shoulder_box: tuple[int, int, int, int]  # ellipse box around a shoulder: left, top, right, bottom
    neck_half: int  # half-side of the neck square


WITH_PARSE = _Shape(shoulder_line=7, shoulder_box=(4, 4, 5, 4), neck_half=4)  # 5 on the right: theirs
FROM_POSE = _Shape(shoulder_line=3, shoulder_box=(3, 3, 3, 3), neck_half=2)


def _points(keypoints: Keypoints) -> tuple[np.ndarray, np.ndarray]:
    """(18, 2) drawing points and (18,) presence, hips rescaled to shoulder width."""
    require(keypoints, (R_SHOULDER, L_SHOULDER), "the masked model")
    p = keypoints.xy.astype(np.float64).copy()
    present = keypoints.present.copy()
    if not present[NECK]:
        p[NECK] = (p[R_SHOULDER] + p[L_SHOULDER]) / 2
        present[NECK] = True
    if present[R_HIP] and present[L_HIP]:
        # The script widens or narrows the hips to the shoulders' width about their middle.
        shoulders = np.linalg.norm(p[L_SHOULDER] - p[R_SHOULDER] + 1e-8)
        hips = np.linalg.norm(p[L_HIP] - p[R_HIP] + 1e-8)
        middle = (p[R_HIP] + p[L_HIP]) / 2
        for i in (R_HIP, L_HIP):
            p[i] = middle + (p[i] - middle) * shoulders / hips
    return p, present


def _draw_body(img: Image.Image, keypoints: Keypoints, shape: _Shape, fill=BLACK) -> Image.Image:
    """Step 4 of the script: black (``fill``) shapes over the arms, torso and neck, on a copy."""
    p, present = _points(keypoints)
    out = img.copy()
    draw = ImageDraw.Draw(out)

    def pt(i: int) -> tuple[float, float]:
        return float(p[i, 0]), float(p[i, 1])

    def ellipse(i: int, left: int, top: int, right: int, bottom: int) -> None:
        x, y = pt(i)
        draw.ellipse((x - left * R, y - top * R, x + right * R, y + bottom * R), fill, fill)

    def line_through(indices: tuple[int, ...], width_r: int) -> None:
        draw.line([pt(i) for i in indices if present[i]], fill, width=width_r * R)

    draw.line([pt(R_SHOULDER), pt(L_SHOULDER)], fill, width=shape.shoulder_line * R)
    for i in (R_SHOULDER, L_SHOULDER):
        ellipse(i, *shape.shoulder_box)
    for i in (R_ELBOW, R_WRIST, L_ELBOW, L_WRIST):
        if present[i - 1] and present[i]:
            draw.line([pt(i - 1), pt(i)], fill, width=10 * R)
            if i in (R_ELBOW, L_ELBOW):
                ellipse(i, 4, 4, 4, 4)
    for i in (R_HIP, L_HIP):
        if present[i]:
            ellipse(i, 3, 6, 3, 6)
    line_through((R_SHOULDER, R_HIP), 6)
    line_through((L_SHOULDER, L_HIP), 6)
    line_through((R_HIP, L_HIP), 12)
    torso = [pt(i) for i in (R_SHOULDER, L_SHOULDER, L_HIP, R_HIP) if present[i]]
    if len(torso) >= 2:
        draw.polygon(torso, fill, fill)
    x, y = pt(NECK)
    half = shape.neck_half * R
    draw.rectangle((x - half, y - half, x + half, y + half), fill, fill)
    return out


def _label_mask(parse: np.ndarray, labels: tuple[int, ...]) -> Image.Image:
    return Image.fromarray(np.isin(parse, labels).astype(np.uint8) * 255, mode="L")


def parse_labels(parse: Image.Image, size_wh: tuple[int, int]) -> np.ndarray:
    """A human-parsing map (one label a pixel) as an (H, W) uint8 array of ``size_wh``.

    A map of another size is scaled with nearest neighbour, so labels stay labels.
    """
    if parse.mode not in ("L", "P", "I", "I;16"):
        raise ValueError(f"parse: expected a one-channel label map (mode L or P), got mode {parse.mode}")
    if parse.size != size_wh:
        parse = parse.resize(size_wh, Image.NEAREST)
    return np.asarray(parse).astype(np.uint8)


def mask_person(person: Image.Image, parse: Image.Image, keypoints: Keypoints) -> Image.Image:
    """The authors' full method: person photo + parsing map + keypoints -> masked model."""
    person = person.convert("RGB")
    labels = parse_labels(parse, person.size)
    # Upper garment blacked out; head and lower body are pasted back from this at the end.
    kept = person.copy()
    kept.paste(BLACK, mask=_label_mask(labels, UPPER_GARMENT_LABELS))
    out = _draw_body(kept, keypoints, WITH_PARSE)
    out.paste(kept, mask=_label_mask(labels, HEAD_LABELS + LOWER_BODY_LABELS))
    return out


def mask_person_from_pose(person: Image.Image, keypoints: Keypoints) -> Image.Image:
    """The keypoints-only variant, for callers with no human-parsing map."""
    return _draw_body(person.convert("RGB"), keypoints, FROM_POSE)


def masked_region(size_wh: tuple[int, int], keypoints: Keypoints, parse: Image.Image | None = None) -> Image.Image:
    """Where the masked model of an image of ``size_wh`` is blacked out (mode L, 255), drawn as
    ``mask_person`` (with ``parse``) or ``mask_person_from_pose`` draws it: the region the model
    dresses, and the only one a composite into the photo may change."""
    if parse is None:
        return _draw_body(Image.new("L", size_wh, 0), keypoints, FROM_POSE, fill=255)
    labels = parse_labels(parse, size_wh)
    region = _draw_body(Image.new("L", size_wh, 0), keypoints, WITH_PARSE, fill=255)
    region.paste(255, mask=_label_mask(labels, UPPER_GARMENT_LABELS))
    region.paste(0, mask=_label_mask(labels, HEAD_LABELS + LOWER_BODY_LABELS))
    return region
