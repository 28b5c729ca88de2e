"""The warm, device-resident network that callers run batches through.

Owns device choice, precision, the set of batch sizes it runs (inputs are
padded up to the nearest) and warm-up. Callers hand it normalised CPU
tensors and get float32 CPU tensors back; they never touch the nn.Module.
"""
from __future__ import annotations

import bisect
import logging
import threading
import time
from dataclasses import dataclass, field

import torch

from .network import check_size
from .weights import WeightsInfo, build_model

log = logging.getLogger("model.engine")

PRECISIONS = ("fp32",)


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' asked for, but torch sees no CUDA device")
    return device


@dataclass
class EngineConfig:
    device: str = "auto"
    precision: str = "fp32"
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8)
    image_size: tuple[int, int] = (256, 192)  # H, W
    weights: str | None = None
    sampler: str = "auto"


@dataclass
class Engine:
    config: EngineConfig = field(default_factory=EngineConfig)

    def __post_init__(self):
        cfg = self.config
        if cfg.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {cfg.precision!r}")
        check_size(*cfg.image_size)
        self.device = pick_device(cfg.device)
        self.batch_sizes = tuple(sorted(set(cfg.batch_sizes)))
        net, self.weights = build_model(cfg.weights, sampler=cfg.sampler)
        self.net = net.to(self.device)
        self.warm = False
        # One forward at a time per device: the model is not re-entrant on the GPU.
        self._lock = threading.Lock()

    @property
    def max_batch_size(self) -> int:
        return self.batch_sizes[-1]

    @property
    def info(self) -> dict:
        return {"device": str(self.device), "precision": self.config.precision,
                "batch_sizes": list(self.batch_sizes), "image_size": list(self.config.image_size),
                "weights": self.weights.name, "random_weights": self.weights.random, "warm": self.warm}

    def padded_size(self, n: int) -> int:
        i = bisect.bisect_left(self.batch_sizes, n)
        return self.batch_sizes[i] if i < len(self.batch_sizes) else n

    def warmup(self) -> dict[int, float]:
        """One forward at every batch size; returns seconds per size."""
        h, w = self.config.image_size
        seconds = {}
        for n in self.batch_sizes:
            zeros = torch.zeros(n, 3, h, w)
            start = time.perf_counter()
            self.infer(zeros, zeros, zeros)
            seconds[n] = time.perf_counter() - start
        self.warm = True
        log.info("engine warm on %s: %s", self.device, {k: round(v, 3) for k, v in seconds.items()})
        return seconds

    def infer(self, pose: torch.Tensor, masked_model: torch.Tensor, cloth: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) inputs in [-1, 1] -> (N, 3, H, W) float32 CPU outputs."""
        n = pose.shape[0]
        if n > self.max_batch_size:
            return torch.cat([self.infer(pose[i:i + self.max_batch_size], masked_model[i:i + self.max_batch_size],
                                         cloth[i:i + self.max_batch_size])
                              for i in range(0, n, self.max_batch_size)])
        padded = self.padded_size(n)
        tensors = [self._pad(t, padded) for t in (pose, masked_model, cloth)]
        with self._lock, torch.inference_mode():
            pose_d, masked_d, cloth_d = (t.to(self.device, non_blocking=True) for t in tensors)
            out = self.net(torch.cat((pose_d, masked_d), dim=1), cloth_d, masked_d)
            return out[:n].float().cpu()

    @staticmethod
    def _pad(t: torch.Tensor, n: int) -> torch.Tensor:
        if t.shape[0] == n:
            return t
        return torch.cat((t, t.new_zeros((n - t.shape[0], *t.shape[1:]))))
