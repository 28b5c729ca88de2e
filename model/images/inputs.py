"""The three model inputs of one request: decoded, brought into the model's frame (the person side
letterboxed or framed, the garment placed as VITON's are), as levels."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .composite import Composite
from .crop import Crop
from .decode import DEFAULT_MAX_PIXELS, ImageSource, decode_image, decode_levels_to_fit
from .garment import place_garment
from .letterbox import Letterbox
from .levels import BLACK, WHITE, Picture, image_to_levels, levels_to_tensor, picture_levels

MODEL_SIZE_HW = (256, 192)  # as published


@dataclass
class TryOnInputs:
    """One request's three model inputs, each (3, H, W) uint8 levels (the engine normalises a
    batch to [-1, 1] where it runs: a quarter of float32's bytes to hash, queue and copy), and
    the transform that maps a result back to the person's own frame (``output_image``)."""
    masked_model: torch.Tensor
    pose: torch.Tensor
    cloth: torch.Tensor
    person_frame: Letterbox | Crop | Composite

    def batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(pose, masked_model, cloth), each a batch of one in [-1, 1]: the network's own inputs."""
        return tuple(levels_to_tensor(t.unsqueeze(0)).contiguous()
                     for t in (self.pose, self.masked_model, self.cloth))


def letterbox_person(masked_model: ImageSource, pose: ImageSource, *, size_hw: tuple[int, int] = MODEL_SIZE_HW,
                     max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[torch.Tensor, torch.Tensor, Letterbox]:
    """Masked model and pose map at ``size_hw`` through one transform, as (3, H, W) levels.

    A pose map of another size than the masked model is taken to span the same
    frame and scaled to it first, so both get the same transform.
    """
    target_wh = (size_hw[1], size_hw[0])
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


def assemble_inputs(masked_model: Picture, pose: Picture, frame: Letterbox | Crop | Composite, cloth: ImageSource,
                    *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> TryOnInputs:
    """Model-size person images, as images or levels (and the frame a result maps back through),
    plus the garment -> levels, placed as VITON's garments are (garment.py)."""
    garment, garment_wh = decode_levels_to_fit(cloth, "cloth", frame.target_size_wh, background=WHITE,
                                               max_pixels=max_pixels)
    return TryOnInputs(
        masked_model=picture_levels(masked_model),
        pose=picture_levels(pose),
        cloth=place_garment(garment, garment_wh, frame.target_size_wh),
        person_frame=frame,
    )


def prepare_inputs(masked_model: ImageSource, pose: ImageSource, cloth: ImageSource, *,
                   size_hw: tuple[int, int] = MODEL_SIZE_HW,
                   max_pixels: int | None = DEFAULT_MAX_PIXELS) -> TryOnInputs:
    """Decodes and letterboxes the three inputs to ``size_hw``."""
    person, skeleton, frame = letterbox_person(masked_model, pose, size_hw=size_hw, max_pixels=max_pixels)
    return assemble_inputs(person, skeleton, frame, cloth, max_pixels=max_pixels)
