"""Fills the on-disk caches a replica reads at start-up, so that a container starts warm.

The image's build runs it (Dockerfile), as does ``bench/startup.py`` for its warm runs: an
engine is built and warmed as the service does it (``Engine.warmup``), which compiles what a
replica would otherwise compile before it is ready:

- on a CPU, Numba's fused sampler (``model/kernels/cpu_sampling.py``, ``cache=True``) into
  ``NUMBA_CACHE_DIR``, or ``__pycache__`` beside the source where that is writable. Numba
  keys its cache by the CPU it compiled for: a replica on another CPU model compiles again
  (about a second) and writes its own entry beside, where the directory is writable;
- on a GPU, where one is present (a ``docker build`` has none), Triton's kernels into
  ``TRITON_CACHE_DIR``, for each batch size's graph.

Python's bytecode is ``python -m compileall``'s (the Dockerfile runs both). The weights are
the seeded random ones unless ``TRYON_WEIGHTS`` or ``weights/`` names a checkpoint: kernels
are compiled for shapes and types, not values.

    NUMBA_CACHE_DIR=/var/cache/numba python -m model.warm_caches --image-size 256x192
"""
from __future__ import annotations

import argparse
import logging
import os

from .engine import Engine, EngineConfig, pick_device
from .images import MODEL_SIZE_HW
from .stopwatch import Stopwatch


def warm_caches(device: str = "auto", image_size_hw: tuple[int, int] = MODEL_SIZE_HW) -> dict:
    """Builds and warms an engine as a replica would (a GPU: every batch size, each capturing its
    graph; a CPU: the sampler's self-check and the smallest batch); returns what it did."""
    clock = Stopwatch()
    engine = Engine(EngineConfig(device=device, image_size_hw=image_size_hw))
    graphs = engine.device.type == "cuda"
    warmup = engine.warmup(None if graphs else engine.batch_sizes[:1])
    return {"device": str(engine.device), "sampler": engine.sampler, "warmup_s": warmup,
            "seconds": round(clock.elapsed, 2),
            "caches": {name: os.environ.get(name) for name in ("NUMBA_CACHE_DIR", "TRITON_CACHE_DIR")}}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (a GPU when torch sees one), cpu or cuda")
    parser.add_argument("--image-size", default="x".join(map(str, MODEL_SIZE_HW)),
                        help="HxW, the service's TRYON_IMAGE_SIZE (Triton specialises on it)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    pick_device(args.device)  # a cuda asked for and absent fails here, with torch's reason
    h, w = (int(x) for x in args.image_size.lower().split("x"))
    print(warm_caches(args.device, (h, w)), flush=True)


if __name__ == "__main__":
    main()
