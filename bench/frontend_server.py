"""``python -m bench.frontend_server``: tryon-serve with the model replaced by a stand-in
that costs nothing, so that a benchmark sees the request path alone (a benchmark
harness, not a way to serve). Same flags and TRYON_* variables as tryon-serve.

The stand-in answers every garment with the garment itself: the queue, the
batches, decoding and encoding all run as served; only the network is gone.
"""
from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from typing import Iterator

import torch

from model.engine import EngineConfig, pick_device
from service.__main__ import main as serve

STANDIN_NAME = "stand-in (no model: the output is the garment)"


@dataclass(frozen=True)
class NoWeights:
    name: str = STANDIN_NAME
    random: bool = False
    sha256: str = hashlib.sha256(STANDIN_NAME.encode()).hexdigest()


class StandInEngine:
    """What the service asks of model.engine.Engine, at no cost: output = cloth."""

    def __init__(self, config: EngineConfig):
        self.config = config
        self.device = pick_device(config.device)
        self.weights = NoWeights()
        self.batch_sizes = tuple(config.batch_sizes)
        self.sampler = "stand-in"
        self.precision = "fp32"

    def warmup(self) -> dict[int, float]:
        return {n: 0.0 for n in self.batch_sizes}

    @property
    def info(self) -> dict:
        return {"device": str(self.device), "batch_sizes": list(self.batch_sizes),
                "image_size": list(self.config.image_size_hw), "weights": self.weights.name,
                "random_weights": False, "warm": True, "sampler": self.sampler,
                "precision": self.precision}

    def infer(self, pose: torch.Tensor, masked_model: torch.Tensor, cloth: torch.Tensor) -> torch.Tensor:
        return cloth

    def iter_garments(self, pose: torch.Tensor, masked_model: torch.Tensor, cloths: torch.Tensor,
                      chunk_size: int | None = None) -> Iterator[tuple[int, torch.Tensor]]:
        step = chunk_size or max(self.batch_sizes)
        for start in range(0, cloths.shape[0], step):
            yield start, cloths[start:start + step]


if __name__ == "__main__":
    serve(sys.argv[1:], engine_factory=StandInEngine)
