"""The first thing `make gpu-check` runs on a box: one trivial Triton kernel, compiled and launched.

Triton builds its launcher with the box's C compiler and Python headers and loads a cubin that the
driver must accept. If any of that fails, every later step would serve through the engine's
reference fallback, and its numbers would not be ours, so the check stops here and says why.
Under ``TRITON_INTERPRET=1`` (the CPU rehearsal) the same kernel runs interpreted.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _add_one(src, dst, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    tl.store(dst + offsets, tl.load(src + offsets, mask=mask) + 1.0, mask=mask)


def launch(device: torch.device) -> str | None:
    """None when the kernel compiled, launched and gave the right numbers on ``device``;
    otherwise why not, in one line."""
    try:
        src = torch.arange(1000, dtype=torch.float32, device=device)
        dst = torch.empty_like(src)
        _add_one[(triton.cdiv(src.numel(), 256),)](src, dst, src.numel(), BLOCK=256)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if not torch.equal(dst.cpu(), src.cpu() + 1):
            return "a trivial Triton kernel ran but wrote wrong numbers"
    except Exception as exc:  # compile, launcher build, driver or launch: all mean the same here
        return f"a trivial Triton kernel failed: {type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}"
    return None
