"""The warm, device-resident network that callers run batches through.

Owns device choice, precision, the set of batch sizes it runs (inputs are
padded up to the nearest) and warm-up. Callers hand it normalised CPU
tensors and get float32 CPU tensors back; they never touch the nn.Module.

On a GPU (docs/gpu.md):
- precision "fp32" (true fp32: TF32 off), "tf32" (TF32 convolutions), "bf16"
  or "fp16" (convolutions in half precision, BatchNorm parameters in fp32);
  in every mode the flows, the softmax of the attention and the sampling
  accumulation stay fp32 (model.network, model.kernels). "auto" is the
  measured default, AUTO_GPU_PRECISION on a GPU and fp32 on the CPU;
- channels-last activations for the half modes, cudnn.benchmark;
- one CUDA graph per configured batch size, captured at warm-up over static
  input buffers; a batch is copied into the smallest buffer it fits.
On the CPU: fp32 or bf16, eager, no graphs; tf32 means fp32 there and fp16
means bf16 (logged).
"""
from __future__ import annotations

import bisect
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn

from .network import DAFlow, check_size
from .weights import build_model

log = logging.getLogger("model.engine")

PRECISIONS = ("fp32", "tf32", "bf16", "fp16", "auto")
# The reduced-precision mode "auto" means on a GPU; chosen from bench/results/accuracy-*.json
# (PSNR of the 8-bit output against fp32 on the golden inputs, >= 40 dB required).
AUTO_GPU_PRECISION = "fp16"
DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CPU_FALLBACK = {"tf32": "fp32", "fp16": "bf16", "auto": "fp32"}
HALF_PRECISIONS = ("bf16", "fp16")
# Eager runs on a side stream before capture (cudnn.benchmark and Triton autotuning happen there).
GRAPH_WARMUP_RUNS = 2


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' asked for, but torch sees no CUDA device")
    return device


def effective_precision(precision: str, device: torch.device) -> str:
    """The mode actually run: "auto" resolved, CPU-unsupported modes degraded."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    if device.type == "cuda":
        return AUTO_GPU_PRECISION if precision == "auto" else precision
    chosen = CPU_FALLBACK.get(precision, precision)
    if chosen != precision and precision != "auto":
        log.warning("precision %s is not run on the CPU; using %s", precision, chosen)
    return chosen


def set_cuda_math(precision: str) -> None:
    """TF32 only in the tf32 mode (so fp32 means IEEE fp32); cudnn picks the
    fastest convolution algorithm per shape (the engine's shapes are fixed)."""
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = True


def prepare_network(net: DAFlow, device: torch.device, precision: str, channels_last: bool = False) -> DAFlow:
    """Moves the network to device and its convolutions to the precision's dtype.
    BatchNorm keeps its fp32 parameters and statistics (it normalises half
    inputs in fp32); the flows never pass through a parameter."""
    net = net.to(device=device)
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            module.to(DTYPES[precision])
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net.eval()


@dataclass
class EngineConfig:
    device: str = "auto"
    precision: str = "fp32"
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8)
    image_size: tuple[int, int] = (256, 192)  # H, W
    weights: str | None = None
    sampler: str = "auto"
    cuda_graphs: bool = True  # GPU only
    channels_last: bool | None = None  # None: on a CPU, and on a GPU in the half modes


@dataclass
class _Graph:
    graph: "torch.cuda.CUDAGraph"
    inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # pose, masked_model, cloth
    output: torch.Tensor


@dataclass
class Engine:
    config: EngineConfig = field(default_factory=EngineConfig)

    def __post_init__(self):
        cfg = self.config
        check_size(*cfg.image_size)
        self.device = pick_device(cfg.device)
        self.precision = effective_precision(cfg.precision, self.device)
        self.dtype = DTYPES[self.precision]
        cuda = self.device.type == "cuda"
        # Channels-last by default on a CPU (oneDNN convolutions take it as is, and the
        # Numba sampler reads it without a copy: 9-14% faster at 256x192 here) and on a
        # GPU in the half modes (tensor cores).
        self.channels_last = (cfg.channels_last if cfg.channels_last is not None
                              else not cuda or self.precision in HALF_PRECISIONS)
        self.memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.use_graphs = cuda and cfg.cuda_graphs
        if cuda:
            set_cuda_math(self.precision)
        self.batch_sizes = tuple(sorted(set(cfg.batch_sizes)))
        net, self.weights = build_model(cfg.weights, sampler=cfg.sampler)
        self.net = prepare_network(net, self.device, self.precision, self.channels_last)
        self.warm = False
        self._graphs: dict[int, _Graph] = {}
        # One memory pool for all graphs: only one replays at a time (under the
        # lock) and its output is copied out before the next replay.
        self._pool = None
        # One forward at a time per device: the model is not re-entrant on the GPU,
        # and the graphs share their static buffers and memory pool.
        self._lock = threading.Lock()

    @property
    def max_batch_size(self) -> int:
        return self.batch_sizes[-1]

    @property
    def info(self) -> dict:
        return {"device": str(self.device), "precision": self.precision,
                "requested_precision": self.config.precision,
                "batch_sizes": list(self.batch_sizes), "image_size": list(self.config.image_size),
                "weights": self.weights.name, "random_weights": self.weights.random, "warm": self.warm,
                "cuda_graphs": self.use_graphs, "channels_last": self.channels_last,
                "sampler": self.config.sampler}

    def padded_size(self, n: int) -> int:
        i = bisect.bisect_left(self.batch_sizes, n)
        return self.batch_sizes[i] if i < len(self.batch_sizes) else n

    def warmup(self) -> dict[int, float]:
        """One forward at every batch size (on a GPU with graphs: the capture,
        largest first so the shared pool is sized once); returns seconds per size."""
        h, w = self.config.image_size
        seconds = {}
        for n in sorted(self.batch_sizes, reverse=True):
            start = time.perf_counter()
            if self.use_graphs:
                with self._lock:
                    self._graphs[n] = self._capture(n)
            zeros = torch.zeros(n, 3, h, w)
            self.infer(zeros, zeros, zeros)
            seconds[n] = time.perf_counter() - start
        self.warm = True
        log.info("engine warm on %s (%s, graphs=%s): %s", self.device, self.precision, self.use_graphs,
                 {k: round(v, 3) for k, v in sorted(seconds.items())})
        return dict(sorted(seconds.items()))

    def infer(self, pose: torch.Tensor, masked_model: torch.Tensor, cloth: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) inputs in [-1, 1] -> (N, 3, H, W) float32 CPU outputs."""
        n = pose.shape[0]
        if n > self.max_batch_size:
            return torch.cat([self.infer(pose[i:i + self.max_batch_size], masked_model[i:i + self.max_batch_size],
                                         cloth[i:i + self.max_batch_size])
                              for i in range(0, n, self.max_batch_size)])
        padded = self.padded_size(n)
        with self._lock, torch.inference_mode():
            graph = self._graphs.get(padded)
            if graph is not None:
                # Rows past n keep the previous batch's data: batch items are independent.
                for static, t in zip(graph.inputs, (pose, masked_model, cloth)):
                    static[:n].copy_(t)
                graph.graph.replay()
                return graph.output[:n].float().cpu()
            pose_d, masked_d, cloth_d = (self._to_device(self._pad(t, padded))
                                         for t in (pose, masked_model, cloth))
            return self._forward(pose_d, masked_d, cloth_d)[:n].float().cpu()

    @property
    def pausable(self) -> bool:
        """Whether ``iter_infer`` pays off: without CUDA graphs a forward run in steps costs the
        same as one call (with graphs, one replay beats any steps)."""
        return not self.use_graphs

    def iter_infer(self, pose: torch.Tensor, masked_model: torch.Tensor,
                   cloth: torch.Tensor) -> Iterator[torch.Tensor | None]:
        """``infer`` in steps that a caller may pause between (bulk work on a CPU, so that
        interactive work waits for one step, not a whole forward): both encoders, then each flow
        level, then the render. Yields None after every step but the last, then the (N, 3, H, W)
        float32 CPU outputs. Eager; the lock is held per step, never across a ``yield``."""
        n = pose.shape[0]
        padded = self.padded_size(n)
        with self._lock, torch.inference_mode():
            pose_d, masked_d, cloth_d = (self._to_device(self._pad(t, padded)) for t in (pose, masked_model, cloth))
            garment = self.net.encode_garment(cloth_d)
            person = self.net.encode_person(torch.cat((pose_d, masked_d), dim=1))
        yield None
        flows = None
        for level in range(len(garment)):
            with self._lock, torch.inference_mode():
                flows = self.net.dafnet.level(level, garment, person, flows)
            yield None
        with self._lock, torch.inference_mode():
            output = self.net.dafnet.render(cloth_d, masked_d, *flows)[:n].float().cpu()
        yield output

    def infer_garments(self, pose: torch.Tensor, masked_model: torch.Tensor, cloths: torch.Tensor) -> torch.Tensor:
        """One person, many garments: (1, 3, H, W) or (3, H, W) pose and masked
        model, (N, 3, H, W) garments -> (N, 3, H, W) float32 CPU outputs
        (``iter_garments`` run to the end)."""
        return torch.cat([outputs for _, outputs in self.iter_garments(pose, masked_model, cloths)])

    def iter_garments(self, pose: torch.Tensor, masked_model: torch.Tensor, cloths: torch.Tensor,
                      chunk_size: int | None = None) -> Iterator[tuple[int, torch.Tensor]]:
        """One person, many garments, chunk by chunk: yields (index of the chunk's first
        garment, (n, 3, H, W) float32 CPU outputs) as each chunk of at most ``chunk_size``
        garments (default and cap: the largest batch size) is done. The person's feature
        pyramid is computed once, before the first chunk, and shared by every garment
        (eager, chunks padded up to a batch size).

        The lock is held per step, never across a ``yield``: a consumer that stops early
        (or is slow) never leaves the engine locked, and other callers may run between
        chunks (the service's single worker thread runs one job at a time anyway)."""
        pose, masked_model = (t.unsqueeze(0) if t.dim() == 3 else t for t in (pose, masked_model))
        if pose.shape[0] != 1 or masked_model.shape[0] != 1:
            raise ValueError("infer_garments takes one person (a batch of 1 pose and masked model)")
        step = min(chunk_size or self.max_batch_size, self.max_batch_size)
        if step < 1:
            raise ValueError(f"chunk_size must be at least 1, not {chunk_size}")
        with self._lock, torch.inference_mode():
            masked_d = self._to_device(masked_model)
            person = self.net.encode_person(torch.cat((self._to_device(pose), masked_d), dim=1))
        for start in range(0, cloths.shape[0], step):
            with self._lock, torch.inference_mode():
                outputs = self._dress(person, masked_d, cloths[start:start + step])
            yield start, outputs

    def _dress(self, person: list[torch.Tensor], masked_d: torch.Tensor, cloths: torch.Tensor) -> torch.Tensor:
        """One chunk of garments on an encoded person -> (n, 3, H, W) float32 CPU outputs."""
        n = cloths.shape[0]
        padded = self.padded_size(n)
        cloth_d = self._to_device(self._pad(cloths, padded))
        garments = self.net.encode_garment(cloth_d)
        # Expanded views: the person's pyramid is never copied per garment.
        reference = [f.expand(padded, -1, -1, -1) for f in person]
        out = self.net.dafnet(garments, reference, cloth_d, masked_d.expand(padded, -1, -1, -1))
        return out[:n].float().cpu()

    def _forward(self, pose: torch.Tensor, masked_model: torch.Tensor, cloth: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat((pose, masked_model), dim=1), cloth, masked_model)

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device, self.dtype).contiguous(memory_format=self.memory_format)

    def _capture(self, n: int) -> _Graph:
        """A CUDA graph of one forward at batch n over static input buffers."""
        h, w = self.config.image_size
        with torch.inference_mode():
            inputs = tuple(torch.zeros(n, 3, h, w, device=self.device, dtype=self.dtype)
                           .contiguous(memory_format=self.memory_format) for _ in range(3))
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(GRAPH_WARMUP_RUNS):
                    self._forward(*inputs)
            torch.cuda.current_stream(self.device).wait_stream(side)
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                output = self._forward(*inputs)
        torch.cuda.synchronize(self.device)
        return _Graph(graph, inputs, output)

    @staticmethod
    def _pad(t: torch.Tensor, n: int) -> torch.Tensor:
        if t.shape[0] == n:
            return t
        return torch.cat((t, t.new_zeros((n - t.shape[0], *t.shape[1:]))))
