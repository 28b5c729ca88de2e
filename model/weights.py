"""Building the network and loading its checkpoint, strictly and safely.

Checkpoint forms accepted (docs/architecture.md, "Published checkpoint files"):
a plain state dict (``ckpt_viton.pt``), a ``{"state_dict": ...}`` training
checkpoint that also pickles an ``argparse.Namespace`` and optimiser state,
``module.``-prefixed keys (DataParallel), and ``.safetensors``. Pickles are
read with ``weights_only=True`` and a one-class allow-list, so a file that
would run code is refused instead of executed.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch

from .network import DAFlow

log = logging.getLogger("model.weights")

WEIGHTS_ENV = "TRYON_WEIGHTS"
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
# Looked up in this order inside the weights folder (see weights/README.md).
WEIGHT_FILE_NAMES = ("daflow.safetensors", "ckpt_viton.safetensors", "ckpt_viton.pt",
                     "ckpt_viton.pth", "pytorch_model.pt", "pytorch_model.bin")
RANDOM_SEED = 0
_SAFE_GLOBALS = [argparse.Namespace]
_SHOWN = 5


class WeightsError(Exception):
    """A checkpoint that cannot be used, with a message saying exactly why."""


def create_model(sampler: str = "auto", seed: int = RANDOM_SEED) -> DAFlow:
    """The network in eval mode, fp32, on the CPU, with seeded random weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = DAFlow(sampler=sampler)
    return net.eval()


def read_checkpoint(source: str | os.PathLike) -> dict:
    """A file's tensors as a flat {key: tensor}, without unpickling code."""
    path = Path(source)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightsError(f"{path}: not a readable safetensors file ({exc})") from None
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise WeightsError(f"{path}: not a PyTorch checkpoint of tensors and plain data; refused to "
                           f"unpickle it ({_unpickler_detail(exc)})") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as exc:
        raise WeightsError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): "
                           f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    return unwrap_state_dict(obj, str(path))


def _unpickler_detail(exc: Exception) -> str:
    """The one useful line of torch's long weights-only refusal."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def unwrap_state_dict(obj, name: str = "state dict") -> dict:
    """Unwraps ``{"state_dict": ...}`` and strips ``module.`` prefixes."""
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj:
        raise WeightsError(f"{name}: not a state dict (found {type(obj).__name__})")
    out = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise WeightsError(f"{name}: not a state dict (entry {key!r} is {type(value).__name__})")
        out[key[len("module."):] if key.startswith("module.") else key] = value
    return out


def _listing(label: str, items: list) -> str:
    shown = ", ".join(items[:_SHOWN]) + (", ..." if len(items) > _SHOWN else "")
    return f"{len(items)} {label}: {shown}"


def check_state_dict(net: torch.nn.Module, state: Mapping[str, torch.Tensor], name: str) -> None:
    """Raises one WeightsError naming missing, unexpected and mis-shaped keys."""
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshaped = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
                 for k, v in expected.items() if k in state and state[k].shape != v.shape]
    problems = [_listing(label, items) for label, items in
                (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)) if items]
    if problems:
        raise WeightsError(f"{name} does not fit DAFlow: " + "; ".join(problems))


def load_weights(net: torch.nn.Module, source) -> torch.nn.Module:
    """Loads ``source`` (a path or a state dict) into ``net``, strictly."""
    if isinstance(source, Mapping):
        state, name = unwrap_state_dict(source), "state dict"
    else:
        state, name = read_checkpoint(source), str(source)
    check_state_dict(net, state, name)
    net.load_state_dict(state, strict=True)
    return net


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def find_weights(explicit: str | os.PathLike | None = None) -> Path | None:
    """An explicit path, else $TRYON_WEIGHTS, else the first known file name in weights/.

    An explicit or configured path that does not exist is an error, not a
    silent fall-back to random weights.
    """
    configured = explicit or os.environ.get(WEIGHTS_ENV)
    if configured:
        path = Path(configured)
        if not _is_file(path):
            raise WeightsError(f"weights file not found: {path}")
        return path
    for name in WEIGHT_FILE_NAMES:
        if _is_file(WEIGHTS_DIR / name):
            return WEIGHTS_DIR / name
    return None


def _is_file(path: Path) -> bool:
    """A folder this process may not enter (a mounted volume owned by another user) is a
    WeightsError saying so, not a PermissionError from deep inside start-up."""
    try:
        return path.is_file()
    except OSError as exc:
        raise WeightsError(f"cannot look for weights at {path}: {exc.strerror or exc} (the folder must be "
                           f"readable by this process's user, uid {os.getuid()})") from None


@dataclass(frozen=True)
class WeightsInfo:
    """What the running network was loaded from; ``random`` is surfaced everywhere."""
    name: str
    random: bool
    sha256: str | None = None

    @property
    def label(self) -> str:
        return "RANDOM (no checkpoint found: outputs are meaningless)" if self.random else self.name


def build_model(weights: str | os.PathLike | None = None, sampler: str = "auto") -> tuple[DAFlow, WeightsInfo]:
    """The network with the checkpoint found by ``find_weights``, or seeded random
    weights with a loud warning when there is none."""
    net = create_model(sampler=sampler)
    path = find_weights(weights)
    if path is None:
        log.warning("NO DAFLOW WEIGHTS FOUND (looked for $%s and %s in %s): running on seeded "
                    "random weights, every output is meaningless. See weights/README.md.",
                    WEIGHTS_ENV, ", ".join(WEIGHT_FILE_NAMES), WEIGHTS_DIR)
        return net, WeightsInfo(name="random", random=True)
    load_weights(net, path)
    return net, WeightsInfo(name=path.name, random=False, sha256=sha256_of(path))
