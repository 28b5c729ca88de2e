"""A batch that runs the device out of memory is split in two and each half retried."""
from __future__ import annotations

from typing import Callable

import torch

from model.device_errors import is_out_of_memory


def infer_splitting_on_oom(infer: Callable, pose: torch.Tensor, masked_model: torch.Tensor, cloth: torch.Tensor,
                           on_split: Callable[[int], None] | None = None) -> list[torch.Tensor | BaseException]:
    """Per-item outputs of ``infer``; on an out-of-memory error (any library's) the batch is
    halved and each half retried, down to single items (whose own OOM is returned, not raised)."""
    try:
        return list(infer(pose, masked_model, cloth))
    except RuntimeError as exc:
        if not is_out_of_memory(exc):
            raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        n = pose.shape[0]
        if n == 1:
            return [exc]
        if on_split is not None:
            on_split(n)
        half = (n + 1) // 2
        return (infer_splitting_on_oom(infer, pose[:half], masked_model[:half], cloth[:half], on_split)
                + infer_splitting_on_oom(infer, pose[half:], masked_model[half:], cloth[half:], on_split))
