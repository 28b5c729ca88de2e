"""The engine's CUDA graphs: one per batch size, over static uint8 buffers, with pinned staging.

A graph holds the whole levels forward (normalisation, network, quantisation): a batch of levels
is copied into pinned staging, crosses in one copy, replays the graph and comes back in one copy.
model.engine decides when to capture (warm-up) and what a failed capture means (eager from then on).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .images.levels import level_table

# Eager runs on a side stream before capture (cudnn.benchmark and Triton autotuning happen there).
GRAPH_WARMUP_RUNS = 2


@dataclass
class Graph:
    """One batch size's graph: static uint8 levels in (pose, masked model, cloth stacked, pixel
    order) and out, on the device, and their pinned host copies. ``copied`` is recorded after
    the copy out of ``staging_in``; the next batch waits for it before writing there."""
    graph: "torch.cuda.CUDAGraph"
    levels: torch.Tensor  # (3, n, H, W, 3) uint8, device
    output: torch.Tensor  # (n, 3, H, W) uint8, device, the network's layout
    staging_in: torch.Tensor  # pinned, like levels
    staging_out: torch.Tensor  # pinned, like output
    copied: "torch.cuda.Event"


@dataclass
class CaptureState:
    """What every graph of one engine shares, made at the first capture."""
    device: torch.device
    # One memory pool for all graphs: only one replays at a time (under the engine's lock)
    # and its output is copied out before the next replay.
    pool: object = None
    # Graphs are captured on a stream of the engine's own device (torch's default capture
    # stream is one per process, made on whichever device captured first).
    stream: "torch.cuda.Stream | None" = field(default=None)


def capture(forward: Callable[[torch.Tensor], torch.Tensor], n: int, size_hw: tuple[int, int],
            state: CaptureState) -> Graph:
    """A CUDA graph of ``forward`` ((3, n, H, W, 3) uint8 levels -> (n, 3, H, W) uint8 levels) at
    batch n over static uint8 buffers, captured on the engine's own stream, with pinned staging for
    the copies in and out. The caller holds the engine's lock and has its device current."""
    device = state.device
    h, w = size_hw
    level_table(device)  # on the device before the capture reads it
    with torch.inference_mode():
        levels = torch.zeros(3, n, h, w, 3, device=device, dtype=torch.uint8)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(GRAPH_WARMUP_RUNS):
                forward(levels)
        torch.cuda.current_stream(device).wait_stream(side)
        if state.pool is None:
            state.pool = torch.cuda.graph_pool_handle()
        if state.stream is None:
            state.stream = torch.cuda.Stream(device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=state.pool, stream=state.stream):
            output = forward(levels)
    torch.cuda.synchronize(device)
    staging_in = torch.empty(levels.shape, dtype=torch.uint8, pin_memory=True)
    staging_out = torch.empty_like(output, device="cpu", pin_memory=True)
    copied = torch.cuda.Event()
    copied.record(torch.cuda.current_stream(device))
    return Graph(graph, levels, output, staging_in, staging_out, copied)


def replay(graph: Graph, n: int, inputs: tuple[torch.Tensor, ...], device: torch.device) -> torch.Tensor:
    """A batch of n <= the graph's size of uint8 levels: into pinned staging (after the last
    copy out of it finished: the event), one copy in, the replay, one copy out, (n, 3, H, W)
    levels on the CPU. The caller's tensors (an arena slot's views) are read here, before
    this returns, and never after. Rows past n keep the previous batch's data: batch items
    are independent."""
    graph.copied.synchronize()
    for staging, t in zip(graph.staging_in, inputs):
        staging[:n].copy_(t.permute(0, 2, 3, 1))
    stream = torch.cuda.current_stream(device)
    graph.levels.copy_(graph.staging_in, non_blocking=True)
    graph.copied.record(stream)
    graph.graph.replay()
    graph.staging_out.copy_(graph.output, non_blocking=True)
    stream.synchronize()
    return graph.staging_out[:n].clone()
