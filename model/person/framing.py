"""Where the person goes in the model's frame: as VITON, the published model's training data, puts them.

The crop box (model/images/crop.py) is placed and sized so that the person's shoulders and torso
land where, and as large as, VITON's median person's do. Measured on VITON's training keypoints
(bench/viton_framing.py, bench/results/viton-framing.json, docs/framing.md: 14,194 frames with
both shoulders and both hips, OpenPose COCO-18, pixels of the 192 x 256 frame):

- the shoulders' middle at x 95.69 (the frame's middle is 96), y 83.78 (the neck's median too);
- the torso, from the shoulders' middle to the hips' middle, 119.07 long (p5-p95 97.5-139.3);
- the shoulders 78.62 apart (p5-p95 62.8-97.4).

The torso sets the box's size where both hips are found (it predicts VITON's own frame height
within -18 % / +17 % for 90 % of frames); otherwise the shoulders' width does (-20 % / +24 %),
which a half-body shot still shows. Where the box leaves the photo it is padded with VITON's
background colour (``model.images.crop.VITON_BACKGROUND``, measured in the same run). For
another model size the same shares of the frame's height are kept (a square frame shows more at
the sides). A photo already at the model's size is taken as framed (``Crop.whole``): VITON's own
frames and the authors' drawings stay pixel for pixel.
"""
from __future__ import annotations

import numpy as np

from ..images import Crop
from .detect import DetectionError
from .keypoints import L_HIP, L_SHOULDER, R_HIP, R_SHOULDER, Keypoints, require

VITON_FRAME_WH = (192, 256)
SHOULDERS_XY = (95.69, 83.78)  # the shoulders' middle in VITON's frame (median)
TORSO = 119.07  # the shoulders' middle to the hips' middle (median)
SHOULDER_WIDTH = 78.62  # (median)
# A person whose torso (or its equal from the shoulders' width) is shorter in the photo than this
# is too small to draw: the masked model's shapes and the pose map would be drawn from a handful
# of pixels, scaled up several times.
MIN_TORSO_PX = 64


def torso_length(keypoints: Keypoints) -> tuple[float, str]:
    """The torso's length in the keypoints' pixels, measured or (no hips) taken from the shoulders'
    width at VITON's proportion, and which it was ("torso" or "shoulders")."""
    require(keypoints, (R_SHOULDER, L_SHOULDER), "framing the person")
    xy = keypoints.xy
    shoulders = (xy[R_SHOULDER] + xy[L_SHOULDER]) / 2
    if keypoints.present[[R_HIP, L_HIP]].all():
        return float(np.linalg.norm((xy[R_HIP] + xy[L_HIP]) / 2 - shoulders)), "torso"
    return float(np.linalg.norm(xy[L_SHOULDER] - xy[R_SHOULDER])) * TORSO / SHOULDER_WIDTH, "shoulders"


def person_crop(keypoints: Keypoints, photo_size_wh: tuple[int, int], model_size_wh: tuple[int, int]) -> Crop:
    """The crop box of ``model_size_wh``'s aspect ratio that frames the person as VITON does."""
    if tuple(photo_size_wh) == tuple(model_size_wh):
        return Crop.whole(photo_size_wh)
    torso, _ = torso_length(keypoints)
    height = torso * VITON_FRAME_WH[1] / TORSO  # the box's height in photo pixels
    xy = keypoints.xy
    shoulders = (xy[R_SHOULDER] + xy[L_SHOULDER]) / 2
    # The shoulders' middle sits SHOULDERS_XY[0] - 96 (frame-height pixels) beside the frame's middle.
    centre_x = shoulders[0] - (SHOULDERS_XY[0] - VITON_FRAME_WH[0] / 2) * height / VITON_FRAME_WH[1]
    return Crop.around(photo_size_wh, (centre_x, shoulders[1]), height, SHOULDERS_XY[1] / VITON_FRAME_WH[1],
                       model_size_wh)


def check_person_size(keypoints: Keypoints, photo_size_wh: tuple[int, int]) -> None:
    """DetectionError person_too_small unless the person is large enough in the photo to draw."""
    torso, measured = torso_length(keypoints)
    if torso < MIN_TORSO_PX:
        what = "torso" if measured == "torso" else "torso (judged from the shoulders' width)"
        width, height = photo_size_wh
        raise DetectionError("person_too_small", f"the person found has a {what} of {torso:.0f} px in the "
                             f"{width}x{height} photo; at least {MIN_TORSO_PX} are needed to draw the model's "
                             "inputs: send a photo in which the person is larger")
