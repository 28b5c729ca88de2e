"""The DAFlow network (Bai et al., ECCV 2022, arXiv 2207.09161, github.com/OFA-Sys/DAFlow) as
plain nn.Modules.

Module and parameter names match the published checkpoint exactly
(tests/fixtures/checkpoint_keys.tsv); docs/architecture.md, "The network", describes the
parts this follows.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .kernels import deformable_sample
from .kernels.flows import compose_head_flows
from .sampling import heads_to_batch, offsets_to_flow, upsample2x

ENCODER_WIDTHS = (64, 128, 256, 256, 256)
FPN_CHANNELS = 256
HEADS = 6
# The light encoder's output, which render warps.
LIGHTS_CHANNELS = 64
LEVELS = len(ENCODER_WIDTHS)
SIZE_MULTIPLE = 2 ** LEVELS
MIN_SIZE = 64


class DownBlock(nn.Module):
    """BatchNorm -> ReLU -> 3x3 stride-2 conv."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1, bias=False),
        )

    def forward(self, x):
        return self.block(x)


class ResBlock(nn.Module):
    """x + (BN -> ReLU -> conv -> BN -> ReLU -> conv)(x)."""

    def __init__(self, channels: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
        )

    def forward(self, x):
        return x + self.block(x)


class FeatureEncoder(nn.Module):
    """Five stride-2 stages; returns every stage's output, finest first."""

    def __init__(self, in_channels: int, widths=ENCODER_WIDTHS):
        super().__init__()
        stages = []
        for width in widths:
            stages.append(nn.Sequential(DownBlock(in_channels, width), ResBlock(width), ResBlock(width)))
            in_channels = width
        self.encoders = nn.ModuleList(stages)

    def forward(self, x):
        features = []
        for stage in self.encoders:
            x = stage(x)
            features.append(x)
        return features


class FeaturePyramid(nn.Module):
    """Top-down FPN to a common width; input and output finest first."""

    def __init__(self, in_widths=ENCODER_WIDTHS, channels: int = FPN_CHANNELS):
        super().__init__()
        coarse_first = list(reversed(in_widths))
        self.adaptive = nn.ModuleList(nn.Conv2d(w, channels, 1) for w in coarse_first)
        self.smooth = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in coarse_first)

    def forward(self, features):
        outputs = []
        previous = None
        for j, x in enumerate(reversed(features)):
            f = self.adaptive[j](x)
            if previous is not None:
                f = f + F.interpolate(previous, scale_factor=2, mode="nearest")
            previous = self.smooth[j](f)
            outputs.append(previous)
        return outputs[::-1]


class FlowEstimator(nn.Module):
    """conv 3x3 -> k x k -> k x k -> k x k with LeakyReLU(0.1) between; 'same' padding."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__()
        pad = kernel_size // 2
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, 128, 3, padding=1),
            nn.LeakyReLU(0.1, inplace=True),
            nn.Conv2d(128, 64, kernel_size, padding=pad),
            nn.LeakyReLU(0.1, inplace=True),
            nn.Conv2d(64, 32, kernel_size, padding=pad),
            nn.LeakyReLU(0.1, inplace=True),
            nn.Conv2d(32, out_channels, kernel_size, padding=pad),
        )

    def forward(self, x):
        return self.layers(x)


def cat_channels(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """torch.cat along channels, in a's layout. A person pyramid shared across garments is
    an expanded view (batch stride 0), for which torch.cat returns NCHW even from
    channels-last garment features: every convolution of the flow estimator would then
    re-lay out its input. A no-op where the layouts already agree."""
    layout = torch.channels_last if a.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    return torch.cat((a, b), dim=1).contiguous(memory_format=layout)


class FlowState(NamedTuple):
    """A level's result, upsampled for the next: flows (N*K, 2, h, w) and attention (N, K, h, w),
    in the order render takes them."""
    cross_flows: torch.Tensor
    cross_att: torch.Tensor
    self_flows: torch.Tensor
    self_att: torch.Tensor


class DAFlowNet(nn.Module):
    """Deformable attention flows from garment and person pyramids, applied to
    the images through a light encoder/decoder."""

    def __init__(self, channels: int = FPN_CHANNELS, heads: int = HEADS, levels: int = LEVELS,
                 sampler: str = "auto"):
        super().__init__()
        self.heads = heads
        # Which deformable-sampling implementation forward uses (model.kernels).
        self.sampler = sampler
        # The channel counts it samples: the pyramids' and the light encoder's (what the
        # engine's warm-up checks a fused kernel at).
        self.sampled_channels = (channels, LIGHTS_CHANNELS)
        # Registration order matches the checkpoint's key order.
        self.Self_MFEs = nn.ModuleList(FlowEstimator(2 * channels, 3 * heads, 7) for _ in range(levels))
        self.Cross_MFEs = nn.ModuleList(FlowEstimator(2 * channels, 3 * heads, 3) for _ in range(levels))
        self.Refine_MFEs = nn.ModuleList(FlowEstimator(2 * channels, 6 * heads, 3) for _ in range(levels))
        self.lights_decoder = nn.Sequential(
            nn.Conv2d(LIGHTS_CHANNELS, 32, 1), nn.LeakyReLU(0.1, inplace=True), nn.Conv2d(32, 3, 3, padding=1))
        self.lights_encoder = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.LeakyReLU(0.1, inplace=True), nn.Conv2d(32, LIGHTS_CHANNELS, 1))

    def warp(self, x: torch.Tensor, flows: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) features, (N*K, 2, h, w) flows, (N, K, h, w) weights -> (N, C, h, w)."""
        return deformable_sample(x, flows, weights, impl=self.sampler)

    def offsets(self, block_output: torch.Tensor) -> torch.Tensor:
        """(N, 2K, h, w) -> (N*K, 2, h, w), one row a head."""
        return heads_to_batch(block_output, self.heads)

    def compose(self, flows: torch.Tensor, block_offsets: torch.Tensor) -> torch.Tensor:
        """Refines the K heads' flows (N*K, 2, h, w) by the offsets in channels 0:2K of
        block_offsets (N, >=2K, h, w)."""
        return compose_head_flows(flows, block_offsets, self.heads, impl=self.sampler)

    def estimate(self, block: nn.Module, source: torch.Tensor, reference: torch.Tensor,
                 flows: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """One flow block: attention from channels 2K:3K, offsets from 0:2K. ``source`` and
        ``reference`` (N, C, h, w) features, ``flows`` (N*K, 2, h, w) or None at the first block
        -> flows (N*K, 2, h, w) and attention (N, K, h, w), both fp32 whatever the convolutions
        run in."""
        k = self.heads
        y = block(cat_channels(source, reference))
        attention = torch.softmax(y[:, 2 * k:3 * k].float(), dim=1)
        if flows is None:
            flows = offsets_to_flow(self.offsets(y[:, :2 * k].float()))
        else:
            flows = self.compose(flows, y[:, :2 * k])
        return flows, attention

    def render(self, cloth: torch.Tensor, masked_model: torch.Tensor, cross_flows: torch.Tensor,
               cross_att: torch.Tensor, self_flows: torch.Tensor, self_att: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) images warped by a level's flows (N*K, 2, H, W) and attention (N, K, H, W)
        (a FlowState at the images' size) -> (N, 3, H, W)."""
        warped_cloth = self.warp(self.lights_encoder(cloth), cross_flows, cross_att)
        warped_person = self.warp(self.lights_encoder(masked_model), self_flows, self_att)
        return self.lights_decoder(warped_cloth + warped_person)

    def level(self, i: int, source_pyramid: list[torch.Tensor], reference_pyramid: list[torch.Tensor],
              flows: FlowState | None) -> FlowState:
        """Flow level ``i`` (0 is the coarsest): refines the previous level's flows (None at level 0)
        and returns them, with their attention, upsampled to the next level's size."""
        k = self.heads
        levels = len(source_pyramid)
        source = source_pyramid[levels - 1 - i]
        reference = reference_pyramid[levels - 1 - i]
        if flows is None:
            cross_flows = self_flows = None
            source_pre, reference_pre = source, reference
        else:
            cross_flows, cross_att, self_flows, self_att = flows
            source_pre = self.warp(source, cross_flows, cross_att)
            reference_pre = self.warp(reference, self_flows, self_att)

        # The cross block sees the un-warped person features (R, not R').
        cross_flows, cross_att = self.estimate(self.Cross_MFEs[i], source_pre, reference, cross_flows)
        source_warped = self.warp(source, cross_flows, cross_att)
        self_flows, self_att = self.estimate(self.Self_MFEs[i], source_warped, reference_pre, self_flows)
        reference_warped = self.warp(reference, self_flows, self_att)

        y = self.Refine_MFEs[i](cat_channels(source_warped, reference_warped))
        cross_flows = self.compose(cross_flows, y[:, 0:2 * k])
        self_flows = self.compose(self_flows, y[:, 2 * k:4 * k])
        attention = torch.softmax(y[:, 4 * k:6 * k].float(), dim=1)

        # Offsets list cross first; the refined weights list self first.
        return FlowState(upsample2x(cross_flows), upsample2x(attention[:, k:]),
                         upsample2x(self_flows), upsample2x(attention[:, :k]))

    def forward(self, source_pyramid: list[torch.Tensor], reference_pyramid: list[torch.Tensor],
                cloth: torch.Tensor, masked_model: torch.Tensor,
                return_all: bool = False) -> torch.Tensor | list[torch.Tensor]:
        """Pyramids finest first; (N, 3, H, W) images -> (N, 3, H, W), or with ``return_all``
        the result rendered at every level, coarsest first."""
        flows = None
        per_level = []
        for i in range(len(source_pyramid)):
            flows = self.level(i, source_pyramid, reference_pyramid, flows)
            if return_all:
                size_hw = flows.cross_att.shape[-2:]
                per_level.append(self.render(
                    F.interpolate(cloth, size=size_hw, mode="bilinear", align_corners=False),
                    F.interpolate(masked_model, size=size_hw, mode="bilinear", align_corners=False), *flows))
        if return_all:
            return per_level
        return self.render(cloth, masked_model, *flows)


class DAFlow(nn.Module):
    """The whole try-on network: forward(ref_input, cloth, masked_model) as published,
    with ref_input = concat(pose, masked_model) along channels, all in [-1, 1]."""

    def __init__(self, sampler: str = "auto"):
        super().__init__()
        self.source_features = FeatureEncoder(3)
        self.reference_features = FeatureEncoder(6)
        self.source_FPN = FeaturePyramid()
        self.reference_FPN = FeaturePyramid()
        self.dafnet = DAFlowNet(sampler=sampler)

    def encode_person(self, ref_input: torch.Tensor) -> list[torch.Tensor]:
        """(N, 6, H, W) pose and masked model -> the person's feature pyramid, (N, 256, H/2**(i+1),
        W/2**(i+1)) finest first; reusable across garments."""
        return self.reference_FPN(self.reference_features(ref_input))

    def encode_garment(self, cloth: torch.Tensor) -> list[torch.Tensor]:
        """(N, 3, H, W) -> the garment's feature pyramid, as ``encode_person``'s."""
        return self.source_FPN(self.source_features(cloth))

    def forward(self, ref_input: torch.Tensor, cloth: torch.Tensor, masked_model: torch.Tensor,
                return_all: bool = False) -> torch.Tensor | list[torch.Tensor]:
        """(N, 6, H, W) ref_input, (N, 3, H, W) cloth and masked model, in [-1, 1] -> (N, 3, H, W),
        or with ``return_all`` one result a level (DAFlowNet.forward)."""
        source_pyramid = self.encode_garment(cloth)
        reference_pyramid = self.encode_person(ref_input)
        return self.dafnet(source_pyramid, reference_pyramid, cloth, masked_model, return_all=return_all)


def check_size(height: int, width: int) -> None:
    """Raise ValueError unless H and W are multiples of 32 and at least 64."""
    for name, v in (("height", height), ("width", width)):
        if v < MIN_SIZE or v % SIZE_MULTIPLE:
            raise ValueError(f"{name} {v} must be a multiple of {SIZE_MULTIPLE} and at least {MIN_SIZE}")
