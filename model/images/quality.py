"""How close two outputs are, as 8-bit images: PSNR."""
from __future__ import annotations

import numpy as np
import torch

from .levels import as_levels


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
