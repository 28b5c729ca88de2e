"""The OpenPose-style pose map, drawn as the DAFlow authors' data script drew it.

The published model only ever saw maps from that script, so this follows it
call for call (OpenCV circles, ellipse polygons and blending), quirks
included: the palette is written as OpenCV BGR triples onto a BGR canvas, and
the file it saves, read as RGB, holds every colour with its channels reversed.
"""
from __future__ import annotations

import math

import cv2
import numpy as np
from PIL import Image

from .keypoints import Keypoints

# Point i and limb j get colour i / j (OpenCV BGR triples, as the script lists them).
PALETTE_BGR = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)
# Limbs as 0-based COCO-18 point pairs, in drawing order.
LIMBS = tuple((a - 1, b - 1) for a, b in (
    (2, 3), (2, 6), (3, 4), (4, 5), (6, 7), (7, 8), (2, 9), (9, 10), (10, 11), (2, 12),
    (12, 13), (13, 14), (2, 1), (1, 15), (15, 17), (1, 16), (16, 18),
))
POINT_RADIUS = 4
LIMB_HALF_WIDTH = 4
LIMB_OPACITY = 0.6  # canvas = 0.4 * canvas + 0.6 * (canvas with the limb)


def draw_pose_map(keypoints: Keypoints, size_wh: tuple[int, int]) -> Image.Image:
    """An RGB pose map of ``size_wh`` with the points in that frame."""
    width, height = size_wh
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    xy, present = keypoints.xy, keypoints.present
    for i in np.flatnonzero(present):
        cv2.circle(canvas, (int(xy[i, 0]), int(xy[i, 1])), POINT_RADIUS, PALETTE_BGR[i], thickness=-1)
    for j, (a, b) in enumerate(LIMBS):
        if not (present[a] and present[b]):
            continue
        (xa, ya), (xb, yb) = xy[a], xy[b]
        half_length = math.hypot(xa - xb, ya - yb) / 2
        angle = math.degrees(math.atan2(ya - yb, xa - xb))
        polygon = cv2.ellipse2Poly((int((xa + xb) / 2), int((ya + yb) / 2)),
                                   (int(half_length), LIMB_HALF_WIDTH), int(angle), 0, 360, 1)
        with_limb = canvas.copy()
        cv2.fillConvexPoly(with_limb, polygon, PALETTE_BGR[j])
        canvas = cv2.addWeighted(canvas, 1 - LIMB_OPACITY, with_limb, LIMB_OPACITY, 0)
    # The BGR palette on a canvas taken as RGB: each colour reversed, as in the saved files.
    return Image.fromarray(np.ascontiguousarray(canvas[..., ::-1]), mode="RGB")
