"""The warm, device-resident network that callers run batches through.

Owns device choice, precision, the set of batch sizes it runs (inputs are
padded up to the nearest) and warm-up. Callers hand it CPU tensors, either
uint8 levels or normalised float, and get the outputs back on the CPU in the
same form (levels are normalised and quantised on the device, so a batch
crosses to and from a GPU as a quarter of float32's bytes); they never touch
the nn.Module.

On a GPU (docs/gpu.md; the precision policy is model.precision):
- precision "fp32" (true fp32: TF32 off), "tf32" (TF32 convolutions), "bf16"
  or "fp16" (convolutions in half precision, BatchNorm parameters in fp32);
  in every mode the flows, the softmax of the attention and the sampling
  accumulation stay fp32 (model.network, model.kernels). "auto" is the
  measured default, AUTO_GPU_PRECISION on a GPU and fp32 on the CPU;
- channels-last activations for the half modes, cudnn.benchmark;
- one CUDA graph per configured batch size (model.cuda_graphs), captured at warm-up
  on a stream of the engine's device over static uint8 input buffers: the
  normalisation, the forward and the quantisation all run inside it (float
  inputs run eagerly). A capture that fails falls back to eager.
On the CPU: fp32 or bf16, eager, no graphs; tf32 means fp32 there and fp16
means bf16 (logged).

Checked at start-up, each falling back with one loud line (reported in ``info``):
- the half mode against fp32 on example inputs, with real weights on a GPU:
  non-finite or under its MIN_PSNR_DB -> bf16, then fp32 (``choose_precision``);
- the fused sampler against the torch reference at warm-up, in the variant that will
  serve (dtype, layout, the network's channel counts): an error or a mismatch -> the
  reference sampler (model.kernels.selfcheck); a sticky device error -> DeviceFailed;
- the warm-up at the serving shapes: a fused kernel's own error there (Triton's CompilationError
  or OutOfResources, not RuntimeErrors) -> the reference sampler, every size warmed again; any
  other failure of a graph's capture -> eager (``cuda_graphs_fallback``).
Every call that runs the network runs inside its device (``torch.cuda.device``),
whichever thread makes it: Triton launches on the current device and stream.
"""
from __future__ import annotations

import bisect
import contextlib
import copy
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from .cuda_graphs import CaptureState, Graph, capture, replay
from .device_errors import DeviceFailed, device_failure
from .images import MODEL_SIZE_HW, levels_to_tensor, prepare_inputs, tensor_to_levels
from .kernels import requested as requested_sampler, resolve as resolve_sampler
from .kernels.selfcheck import REFERENCE as REFERENCE_SAMPLER, check_fused
from .network import DAFlow, check_size
from .precision import (DTYPES, choose_precision, default_channels_last, effective_precision, prepare_network,
                        run_in_precision, set_cuda_math)
from .stopwatch import Stopwatch
from .weights import build_model

log = logging.getLogger("model.engine")

def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' asked for, but torch sees no CUDA device")
    return device


@dataclass(frozen=True)
class EngineConfig:
    device: str = "auto"
    precision: str = "fp32"
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8)
    image_size_hw: tuple[int, int] = MODEL_SIZE_HW
    weights: str | None = None
    sampler: str = "auto"
    cuda_graphs: bool = True  # GPU only
    # cuDNN's per-shape algorithm search (GPU only); the GPU tests turn it off so batch sizes
    # 1 and 2 run the same algorithms under their 1e-4 bound.
    cudnn_benchmark: bool = True
    channels_last: bool | None = None  # None: on a CPU, and on a GPU in the half modes
    # The half mode against fp32 at start-up; None: on a GPU when the weights are real.
    check_precision: bool | None = None
    # A folder with pose.png, masked_model.png and cloth.png for that check (the
    # service's examples); None: seeded random images.
    check_inputs: str | None = None


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}"


class Engine:
    """The network on its device, prepared once from ``config`` (device, precision, sampler,
    batch sizes, each checked and resolved here and reported in ``info``)."""

    def __init__(self, config: EngineConfig):
        self.config = cfg = config
        check_size(*cfg.image_size_hw)
        self.device = pick_device(cfg.device)
        cuda = self.device.type == "cuda"
        if cuda and self.device.index is None:
            # Pinned now: a thread that later runs the engine may have another current device.
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.batch_sizes = tuple(sorted(set(cfg.batch_sizes)))
        # TRYON_SAMPLER read and resolved once, here; warm-up may fall back to the reference.
        self.requested_sampler = requested_sampler(cfg.sampler)
        self.sampler = resolve_sampler(self.requested_sampler, self.device)
        self.sampler_fallback: str | None = None
        net, self.weights = build_model(cfg.weights, sampler=self.sampler)
        self.precision = effective_precision(cfg.precision, self.device)
        self.precision_fallback: list[str] = []
        check = cfg.check_precision if cfg.check_precision is not None else cuda and not self.weights.random
        if check:
            # Each mode is held to its own bar (MIN_PSNR_DB: what docs/gpu.md measures it at).
            with self._device():
                self.precision, self.precision_fallback = choose_precision(
                    self.precision, self._precision_runner(net))
            if self.precision_fallback:
                log.error("PRECISION FALLBACK: %s refused on the check inputs (%s); serving %s",
                          cfg.precision, "; ".join(self.precision_fallback), self.precision)
        self.dtype = DTYPES[self.precision]
        self.channels_last = (cfg.channels_last if cfg.channels_last is not None
                              else default_channels_last(self.device, self.precision))
        self.memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.use_graphs = cuda and cfg.cuda_graphs
        if cuda:
            set_cuda_math(self.precision, cfg.cudnn_benchmark)
        self.net = prepare_network(net, self.device, self.precision, self.channels_last)
        self.graphs_fallback: str | None = None
        self.warm = False
        # Bytes the garments path (eager, outside the graphs' pool) reserved at warm-up.
        self.garments_reserved_bytes = 0
        self._graphs: dict[int, Graph] = {}
        self._capture_state = CaptureState(self.device)  # the graphs' shared pool and capture stream
        # One forward at a time per device: the model is not re-entrant on the GPU,
        # and the graphs share their static buffers and memory pool.
        self._lock = threading.Lock()

    @property
    def max_batch_size(self) -> int:
        return self.batch_sizes[-1]

    @property
    def info(self) -> dict:
        return {"device": str(self.device), "precision": self.precision,
                "requested_precision": self.config.precision, "precision_fallback": self.precision_fallback,
                "batch_sizes": list(self.batch_sizes), "image_size": list(self.config.image_size_hw),
                "weights": self.weights.name, "random_weights": self.weights.random, "warm": self.warm,
                "cuda_graphs": self.use_graphs, "cuda_graphs_fallback": self.graphs_fallback,
                "channels_last": self.channels_last,
                "sampler": self.sampler, "requested_sampler": self.requested_sampler,
                "sampler_fallback": self.sampler_fallback,
                "garments_reserved_bytes": self.garments_reserved_bytes}

    def _device(self):
        """The engine's device made current (a no-op on the CPU)."""
        return torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext()

    @contextlib.contextmanager
    def _running(self):
        """One step of the network: the lock, inference mode, the engine's device."""
        with self._lock, torch.inference_mode(), self._device():
            yield

    def _precision_runner(self, net: DAFlow) -> Callable[[str], torch.Tensor]:
        """run(mode) -> a copy of net's output on the check inputs in that mode."""
        h, w = self.config.image_size_hw
        folder = self.config.check_inputs
        if folder is not None:
            example = prepare_inputs(*((Path(folder) / f"{name}.png").read_bytes()
                                       for name in ("masked_model", "pose", "cloth")), size_hw=(h, w))
            inputs = example.batch()
        else:
            gen = torch.Generator().manual_seed(0)
            inputs = tuple(torch.rand(1, 3, h, w, generator=gen) * 2 - 1 for _ in range(3))

        def run(mode: str) -> torch.Tensor:
            # The reference sampler: this checks the convolutions' precision (sampling sums in
            # fp32 in every mode), and the fused kernels are checked on their own at warm-up.
            trial = copy.deepcopy(net)
            trial.dafnet.sampler = REFERENCE_SAMPLER
            return run_in_precision(trial, inputs, mode, self.device, self.config.cudnn_benchmark)
        return run

    def _check_sampler(self) -> None:
        """The fused kernels against the reference, once, as they will serve (dtype, layout,
        the network's channel counts); on failure the reference serves. A sticky device
        error is no fallback: it raises DeviceFailed and the engine never becomes warm."""
        with self._device():
            reason = check_fused(self.sampler, self.device, self.dtype, channels_last=self.channels_last,
                                 channels=self.net.dafnet.sampled_channels)
            if reason is not None:
                self._raise_if_device_broken(reason)
        if reason is not None:
            self._fall_back_sampler(reason)

    def _fall_back_sampler(self, reason: str) -> None:
        log.error("SAMPLER FALLBACK: %s; serving with the %s reference sampler", reason, REFERENCE_SAMPLER)
        self.sampler_fallback = reason
        self.sampler = REFERENCE_SAMPLER
        self.net.dafnet.sampler = REFERENCE_SAMPLER

    def _fused_kernel_failed(self, exc: BaseException) -> bool:
        """A fused kernel failed at a serving shape the self-check did not reach (its 13x11 case
        specialises differently): Triton's CompilationError, OutOfResources and the like derive
        from Exception, not RuntimeError, and name their module."""
        return self.sampler != REFERENCE_SAMPLER and type(exc).__module__.split(".")[0] == "triton"

    def _raise_if_device_broken(self, reason: str) -> None:
        """After a failure on the GPU: DeviceFailed when the context is gone (the failure's
        text says so, or a synchronisation now fails), so nothing "falls back" onto a dead
        context."""
        broken = device_failure(RuntimeError(reason))
        if broken is None and self.device.type == "cuda":
            try:
                torch.cuda.synchronize(self.device)
            except RuntimeError as exc:
                broken = device_failure(exc) or f"{type(exc).__name__}: {exc}"
        if broken is not None:
            log.error("DEVICE FAILED at warm-up: %s", broken)
            raise DeviceFailed(broken)

    def padded_size(self, n: int) -> int:
        i = bisect.bisect_left(self.batch_sizes, n)
        return self.batch_sizes[i] if i < len(self.batch_sizes) else n

    def warmup(self, batch_sizes: tuple[int, ...] | None = None) -> dict[int, float]:
        """The sampler check, then one forward at every batch size of ``batch_sizes`` (None:
        all the engine's; on a GPU with graphs: the capture, largest first so the shared pool
        is sized once) and one garments chunk of every size; returns seconds per batch size."""
        self._check_sampler()
        sizes = sorted(self.batch_sizes if batch_sizes is None else batch_sizes, reverse=True)
        try:
            seconds = self._warm_sizes(sizes)
        except Exception as exc:
            if not self._fused_kernel_failed(exc):
                raise
            reason = _one_line(exc)
            self._raise_if_device_broken(reason)
            # Graphs captured so far hold the fused kernels: all are captured again.
            self._graphs.clear()
            self._fall_back_sampler(f"{self.sampler} sampler failed at warm-up: {reason}")
            seconds = self._warm_sizes(sizes)
        self.warm = True
        log.info("engine warm on %s (%s, graphs=%s): %s", self.device, self.precision, self.use_graphs,
                 {k: round(v, 3) for k, v in sorted(seconds.items())})
        return dict(sorted(seconds.items()))

    def _warm_sizes(self, sizes: list[int]) -> dict[int, float]:
        """Each size's capture (with graphs) and one forward, then the garments path; seconds per size."""
        h, w = self.config.image_size_hw
        seconds = {}
        for n in sizes:
            clock = Stopwatch()
            if self.use_graphs:
                self._capture_or_fall_back(n)
            zeros = torch.zeros(n, 3, h, w, dtype=torch.uint8)
            self.infer(zeros, zeros, zeros)
            seconds[n] = clock.elapsed
        self._warm_garments()
        return seconds

    def infer(self, pose: torch.Tensor, masked_model: torch.Tensor, cloth: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) inputs in [-1, 1] -> (N, 3, H, W) float32 CPU outputs; uint8 levels in,
        uint8 levels out."""
        n = pose.shape[0]
        if n > self.max_batch_size:
            return torch.cat([self.infer(pose[i:i + self.max_batch_size], masked_model[i:i + self.max_batch_size],
                                         cloth[i:i + self.max_batch_size])
                              for i in range(0, n, self.max_batch_size)])
        padded = self.padded_size(n)
        with self._running():
            graph = self._graphs.get(padded) if pose.dtype == torch.uint8 else None
            if graph is not None:
                return self._replay(graph, n, (pose, masked_model, cloth))
            pose_d, masked_d, cloth_d = (self._to_device(self._pad(t, padded))
                                         for t in (pose, masked_model, cloth))
            return self._from_device(self._forward(pose_d, masked_d, cloth_d)[:n], like=pose)

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
        CPU outputs (as ``infer`` gives them). Eager; the lock is held per step, never across a
        ``yield``."""
        n = pose.shape[0]
        padded = self.padded_size(n)
        with self._running():
            pose_d, masked_d, cloth_d = (self._to_device(self._pad(t, padded)) for t in (pose, masked_model, cloth))
            garment = self.net.encode_garment(cloth_d)
            person = self.net.encode_person(torch.cat((pose_d, masked_d), dim=1))
        yield None
        flows = None
        for level in range(len(garment)):
            with self._running():
                flows = self.net.dafnet.level(level, garment, person, flows)
            yield None
        with self._running():
            output = self._from_device(self.net.dafnet.render(cloth_d, masked_d, *flows)[:n], like=pose)
        yield output

    def infer_garments(self, pose: torch.Tensor, masked_model: torch.Tensor, cloths: torch.Tensor) -> torch.Tensor:
        """One person, many garments: (1, 3, H, W) or (3, H, W) pose and masked
        model, (N, 3, H, W) garments -> (N, 3, H, W) float32 CPU outputs
        (``iter_garments`` run to the end)."""
        return torch.cat([outputs for _, outputs in self.iter_garments(pose, masked_model, cloths)])

    def iter_garments(self, pose: torch.Tensor, masked_model: torch.Tensor, cloths: torch.Tensor,
                      chunk_size: int | None = None) -> Iterator[tuple[int, torch.Tensor]]:
        """One person, many garments, chunk by chunk: yields (index of the chunk's first
        garment, (n, 3, H, W) CPU outputs, as ``infer`` gives them) as each chunk of at most ``chunk_size``
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
        with self._running():
            masked_d = self._to_device(masked_model)
            person = self.net.encode_person(torch.cat((self._to_device(pose), masked_d), dim=1))
        for start in range(0, cloths.shape[0], step):
            with self._running():
                outputs = self._dress(person, masked_d, cloths[start:start + step])
            yield start, outputs

    def _warm_garments(self) -> None:
        """One garments chunk of every batch size: cudnn.benchmark and the Triton autotuner
        see the path's shapes at start-up, not under the first batch request's lock; on a
        GPU the memory it reserves beyond the graphs' pool is counted."""
        if self.device.type != "cuda":
            return
        h, w = self.config.image_size_hw
        before = torch.cuda.memory_reserved(self.device)
        zeros = torch.zeros(1, 3, h, w)
        for n in self.batch_sizes:
            for _ in self.iter_garments(zeros, zeros, torch.zeros(n, 3, h, w), chunk_size=n):
                pass
        self.garments_reserved_bytes = torch.cuda.memory_reserved(self.device) - before

    def _dress(self, person: list[torch.Tensor], masked_d: torch.Tensor, cloths: torch.Tensor) -> torch.Tensor:
        """One chunk of garments on an encoded person -> (n, 3, H, W) CPU outputs."""
        n = cloths.shape[0]
        padded = self.padded_size(n)
        cloth_d = self._to_device(self._pad(cloths, padded))
        garments = self.net.encode_garment(cloth_d)
        # Expanded views: the person's pyramid is never copied per garment.
        reference = [f.expand(padded, -1, -1, -1) for f in person]
        out = self.net.dafnet(garments, reference, cloth_d, masked_d.expand(padded, -1, -1, -1))
        return self._from_device(out[:n], like=cloths)

    def _forward(self, pose: torch.Tensor, masked_model: torch.Tensor, cloth: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat((pose, masked_model), dim=1), cloth, masked_model)

    def _normalised(self, t: torch.Tensor) -> torch.Tensor:
        """On the device, in [-1, 1]: uint8 levels are copied as they are and converted there.
        (``is_pinned`` only for a GPU: on a GPU host it opens a CUDA context, which a CPU
        engine must not.)"""
        if self.device.type == "cuda":
            t = t.to(self.device, non_blocking=t.is_pinned())
        return levels_to_tensor(t) if t.dtype == torch.uint8 else t

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        return self._normalised(t).to(self.dtype).contiguous(memory_format=self.memory_format)

    @staticmethod
    def _from_device(out: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Outputs in the inputs' form: levels for levels (quantised before the copy back)."""
        return (tensor_to_levels(out) if like.dtype == torch.uint8 else out.float()).cpu()

    def _levels_forward(self, levels: torch.Tensor) -> torch.Tensor:
        """What a graph runs: (3, n, H, W, 3) uint8 levels (pose, masked model, cloth in pixel
        order) -> (n, 3, H, W) uint8 output levels, all on the device. Eager on the CPU gives
        ``infer``'s levels exactly (tests/model/test_engine.py)."""
        pose, masked, cloth = (levels_to_tensor(t.permute(0, 3, 1, 2)).to(self.dtype)
                               .contiguous(memory_format=self.memory_format) for t in levels)
        return tensor_to_levels(self._forward(pose, masked, cloth))

    def _capture_or_fall_back(self, n: int) -> None:
        """The graph of batch size n; a capture that fails turns graphs off for the whole engine
        (eager from then on) with one line, and ``info`` and /readyz say why. A sticky device
        error raises DeviceFailed instead."""
        try:
            with self._running():
                self._graphs[n] = self._capture(n)
        except Exception as exc:
            if self._fused_kernel_failed(exc):
                raise  # warm-up's sampler fallback, then every size again
            reason = f"batch {n}: {_one_line(exc)}"
            self._raise_if_device_broken(reason)
            log.error("CUDA GRAPHS FALLBACK: capture failed (%s); serving eagerly", reason)
            self.graphs_fallback = reason
            self.use_graphs = False
            self._graphs.clear()

    def _capture(self, n: int) -> Graph:
        """Batch n's graph (model.cuda_graphs); tests replace it to fail as a GPU's capture does."""
        return capture(self._levels_forward, n, self.config.image_size_hw, self._capture_state)

    def _replay(self, graph: Graph, n: int, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return replay(graph, n, inputs, self.device)

    @staticmethod
    def _pad(t: torch.Tensor, n: int) -> torch.Tensor:
        if t.shape[0] == n:
            return t
        return torch.cat((t, t.new_zeros((n - t.shape[0], *t.shape[1:]))))
