"""Fused deformable attention sampling on the CPU, compiled with Numba.

Computes ``out[b] = sum_k weights[b, k] * grid_sample(features[b], flows[b*K + k])``
(bilinear, border padding, align_corners=False; docs/architecture.md, "Sampling
conventions") in one pass over the output pixels: each pixel reads its K flows
and weights, gathers the four neighbours of each sample point and accumulates
in fp32 in its own output row (C numbers, which stay in L1). Nothing is repeated K times. Rows of the
output are shared out among torch.get_num_threads() threads.

The features are read channels-last (B, H, W, C), so the innermost loop runs
over C contiguous numbers and vectorises; the result is handed back as a
channels-last tensor viewed as (B, C, h, w), which every torch op downstream
accepts without a copy. The compiled code is cached on disk (``cache=True``),
so the JIT cost is paid once per machine; a cache folder that is read-only (the
image's, filled at build) is read from a writable copy (``numba_cache``).
"""
from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import torch

from .numba_cache import use_writable_cache

# Chunks of output rows per thread: small enough that a thread slowed down
# (e.g. by torch's OpenMP workers still spinning) leaves its share to the others.
CHUNKS_PER_THREAD = 8
# Below this many multiply-adds (pixels * heads * channels) one thread does it
# all: waking a helper costs a scheduler round trip, which on a busy CPU is
# worth more than the work of the coarse levels (up to 32x24 at 256x192).
PARALLEL_MIN_WORK = 2_000_000
_pools_lock = threading.Lock()
_pools: dict[int, ThreadPoolExecutor] = {}


def _helpers(count: int) -> ThreadPoolExecutor:
    """``count`` helper threads, started once per count and kept."""
    with _pools_lock:
        if count not in _pools:
            _pools[count] = ThreadPoolExecutor(count, thread_name_prefix="cpu-sampling")
        return _pools[count]


def _run_parallel(arrays: tuple, rows: int, work_size: int) -> None:
    """Runs the kernel over all rows on torch.get_num_threads() threads.

    The calling thread works too, and every thread takes the next chunk when it
    is free, so the call never waits on a thread that is not running. Helpers
    sleep between calls instead of spinning: a second OpenMP pool beside
    torch's made the whole network several times slower on a busy CPU.
    """
    threads = max(1, min(torch.get_num_threads(), rows))
    if threads == 1 or work_size < PARALLEL_MIN_WORK:
        _sample_rows(*arrays, 0, rows)
        return
    step = max(1, -(-rows // (threads * CHUNKS_PER_THREAD)))
    chunks = iter(range(0, rows, step))
    take = threading.Lock()

    def work():
        while True:
            with take:
                first = next(chunks, None)
            if first is None:
                return
            _sample_rows(*arrays, first, min(first + step, rows))

    pool = _helpers(threads - 1)
    helpers = [pool.submit(work) for _ in range(threads - 1)]
    work()
    for done in helpers:
        done.result()


use_writable_cache()  # before the decorator below, which needs a folder it can write


# "contract" lets LLVM fuse multiply-adds; every other IEEE rule (NaN, order of
# the sums over heads) stays, so the NaN-to-border clamp below still holds.
@numba.njit(cache=True, nogil=True, fastmath={"contract"})
def _sample_rows(features, flows, weights, out, first, last):  # pragma: no cover - compiled
    """Output rows [first, last) of the flattened (B*h) rows.

    features (B, Hin, Win, C), flows (B*K, 2, h, w), weights (B, K, h, w) -> out (B, h, w, C).
    Each corner and the output pixel are read as (C,) row views indexed from 0:
    with no negative index to wrap, the channel loop vectorises (a flat index
    ``base + c`` kept it scalar, five times slower).
    """
    in_h, in_w, channels = features.shape[1], features.shape[2], features.shape[3]
    heads, h, w = weights.shape[1], weights.shape[2], weights.shape[3]
    one = np.float32(1.0)
    half = np.float32(0.5)
    zero = np.float32(0.0)
    size_x = np.float32(in_w)
    size_y = np.float32(in_h)
    last_x = np.float32(in_w - 1)
    last_y = np.float32(in_h - 1)
    for row in range(first, last):
        b = row // h
        y = row - b * h
        for x in range(w):
            acc = out[b, y, x]
            for c in range(channels):
                acc[c] = zero
            for k in range(heads):
                a = weights[b, k, y, x]
                gx = flows[b * heads + k, 0, y, x]
                gy = flows[b * heads + k, 1, y, x]
                # Unnormalise (align_corners=False), then clip to the border.
                # Every constant is float32: a float64 one would turn the
                # whole sum below into float64.
                ix = ((gx + one) * size_x - one) * half
                iy = ((gy + one) * size_y - one) * half
                # Written so that NaN lands on 0: indices must stay in range.
                if not ix > zero:
                    ix = zero
                if ix > last_x:
                    ix = last_x
                if not iy > zero:
                    iy = zero
                if iy > last_y:
                    iy = last_y
                fx0 = np.float32(math.floor(ix))
                fy0 = np.float32(math.floor(iy))
                x0 = int(fx0)
                y0 = int(fy0)
                fx = ix - fx0
                fy = iy - fy0
                # At the last row/column the far neighbour has weight 0: reuse the near one.
                x1 = min(x0 + 1, in_w - 1)
                y1 = min(y0 + 1, in_h - 1)
                # grid_sample's bilinear weights, each scaled by the head's weight
                # once per head rather than once per channel.
                w00 = a * ((one - fx) * (one - fy))
                w01 = a * (fx * (one - fy))
                w10 = a * ((one - fx) * fy)
                w11 = a * (fx * fy)
                f00 = features[b, y0, x0]
                f01 = features[b, y0, x1]
                f10 = features[b, y1, x0]
                f11 = features[b, y1, x1]
                for c in range(channels):
                    acc[c] += w00 * f00[c] + w01 * f01[c] + w10 * f10[c] + w11 * f11[c]


def deformable_sample_cpu(features: torch.Tensor, flows: torch.Tensor,
                          weights: torch.Tensor) -> torch.Tensor:
    """features (B, C, H, W), flows (B*K, 2, h, w), weights (B, K, h, w) -> (B, C, h, w).

    CPU tensors of any float dtype and any strides; computes in fp32 and
    returns the features' dtype. The result is channels-last in memory (a
    permuted view), which is a valid (B, C, h, w) tensor. Inference only:
    there is no backward, so inputs that need a gradient are refused.
    """
    b, c, in_h, in_w = features.shape
    k, h, w = weights.shape[1:]
    if weights.shape[0] != b or tuple(flows.shape) != (b * k, 2, h, w):
        raise ValueError(f"shapes do not fit: features {tuple(features.shape)}, "
                         f"flows {tuple(flows.shape)}, weights {tuple(weights.shape)}")
    if any(t.device.type != "cpu" for t in (features, flows, weights)):
        raise ValueError("deformable_sample_cpu takes CPU tensors only")
    if torch.is_grad_enabled() and any(t.requires_grad for t in (features, flows, weights)):
        raise RuntimeError("the Numba sampler has no backward; use impl='torch' for training")
    # A no-op when the features are already channels-last (e.g. a previous output).
    feats = features.to(torch.float32).permute(0, 2, 3, 1).contiguous()
    flows32 = flows.to(torch.float32).contiguous()
    weights32 = weights.to(torch.float32).contiguous()
    out = torch.empty((b, h, w, c), dtype=torch.float32)
    _run_parallel((feats.numpy(), flows32.numpy(), weights32.numpy(), out.numpy()), b * h, b * h * w * k * c)
    return out.permute(0, 3, 1, 2).to(features.dtype)
