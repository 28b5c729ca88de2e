"""The network as one ONNX file, for runtimes other than ours (docs/onnx.md).

The graph is the network with plain torch sampling: every deformable sampling and
flow composition is an ONNX GridSample node (model.sampling), never the Numba or
Triton kernels, so any ONNX runtime (onnxruntime, TensorRT) runs it as it is.
Inputs and output are those of ``Engine.infer``: pose, masked_model and cloth,
(N, 3, H, W) float32 NCHW in [-1, 1], give tryon, (N, 3, H, W) float32 in about
[-1, 1]. N is dynamic; H and W are fixed when the file is written.

Exported with torch's dynamo-based exporter (``torch.export`` then onnxscript),
the one torch maintains; its TorchScript-based exporter is deprecated.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from torch import nn

from .engine import EngineConfig
from .network import DAFlow, check_size
from .weights import WeightsInfo, build_model

INPUT_NAMES = ("pose", "masked_model", "cloth")
OUTPUT_NAME = "tryon"
# The published formulation (features repeated K times, one GridSample per sampling) gives
# 38 GridSample nodes where the per-head reference gives 138, and exports in half the time;
# same sums, another order (bench.cpu_model records their difference).
EXPORT_SAMPLER = "published"
# ONNX GridSample with border padding exists from opset 16; 18 is what the exporter writes natively.
DEFAULT_OPSET = 18
MIN_OPSET = 16
IMAGE_SIZE_ENV = "TRYON_IMAGE_SIZE"
DEFAULT_IMAGE_SIZE_HW = EngineConfig().image_size_hw


class ExportError(Exception):
    """An export that cannot be done, with a message saying why."""


class TryOnGraph(nn.Module):
    """The network with the engine's inputs: pose, masked model and garment as separate images."""

    def __init__(self, net: DAFlow):
        super().__init__()
        self.net = net

    def forward(self, pose: torch.Tensor, masked_model: torch.Tensor, cloth: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) each, in [-1, 1] -> (N, 3, H, W)."""
        return self.net(torch.cat((pose, masked_model), dim=1), cloth, masked_model)


def parse_image_size(text: str) -> tuple[int, int]:
    """"HxW" (as TRYON_IMAGE_SIZE) -> (H, W), checked against the network's size rule."""
    parts = text.lower().replace(" ", "").split("x")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ExportError(f"image size must be HxW such as 256x192, not {text!r}")
    size_hw = int(parts[0]), int(parts[1])
    try:
        check_size(*size_hw)
    except ValueError as exc:
        raise ExportError(f"image size {text}: {exc}") from None
    return size_hw


def default_image_size_hw() -> tuple[int, int]:
    """TRYON_IMAGE_SIZE when set (the service's setting), else the engine's default."""
    configured = os.environ.get(IMAGE_SIZE_ENV)
    return parse_image_size(configured) if configured else DEFAULT_IMAGE_SIZE_HW


def export_onnx(out: str | os.PathLike, weights: str | os.PathLike | None = None,
                image_size_hw: tuple[int, int] | None = None, opset: int = DEFAULT_OPSET) -> WeightsInfo:
    """Writes the network with its checkpoint (found as ``build_model`` finds it) to ``out``
    as a single .onnx file; returns which weights went in."""
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} has no GridSample; use {MIN_OPSET} or later")
    if importlib.util.find_spec("onnxscript") is None:
        raise ExportError("the ONNX exporter needs onnx and onnxscript: pip install 'daflow-tryon[onnx]'")
    height, width = image_size_hw or default_image_size_hw()
    check_size(height, width)
    net, info = build_model(weights, sampler=EXPORT_SAMPLER)
    graph = TryOnGraph(net).eval()
    # Batch 2 in the example so that the exporter cannot specialise the batch dimension to 1.
    example = tuple(torch.zeros(2, 3, height, width) for _ in INPUT_NAMES)
    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(
        graph, example, dynamo=True, opset_version=opset, external_data=False,
        input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
        dynamic_shapes={name: {0: batch} for name in INPUT_NAMES}, verbose=False)
    program.model.metadata_props.update({
        "image_size_hw": f"{height}x{width}", "normalisation": "inputs and output in [-1, 1], NCHW, RGB",
        "weights": info.name, "random_weights": str(info.random).lower(),
        "weights_sha256": info.sha256 or ""})
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path))
    return info
