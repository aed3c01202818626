"""SAHR + WAHR: scale-adaptive and weight-adaptive heatmap regression, adapted to top-down.

Method (Luo et al., "Rethinking the Heatmap Regression for Bottom-up Human Pose Estimation", CVPR 2021,
https://arxiv.org/abs/2012.15175; code github.com/greatlog/SWAHR-HumanPose). SAHR lets the
network choose the width of each keypoint's Gaussian: a second branch predicts a per-pixel scale α and the
target becomes Ĥ = H^(1+α), i.e. σ_eff = σ0/√(1+α), in its second-order Taylor form
Ĥ = H·(1 + α ln H + ½ α² ln² H) on the support of H (ln H := 0 where H = 0), with the regulariser
mean((α·1[H>0])²) keeping α near 0. WAHR reweights the squared error towards the hard pixels,
W = H^γ·|1 - P| + (1 - H^γ)·|P| with γ = 0.01, computed from the *unscaled* H and the prediction P,
not detached (as the code). α is discarded at test time and the heatmap decoded as a plain one.
Loss: ½·[mean(w·W·(P - Ĥ)²) + λ_reg·mean(w·(α·1[S])²)], means over batch, joints and pixels, w the
keypoint weight. The two flags give the ablation as one table: ``scale_adaptive`` (SAHR: the α branch, the
scaled target and the regulariser) and ``weight_adaptive`` (WAHR: W); with both off the loss is exactly
``JointsMSELoss`` (½·mean((w·P - w·G)²)), the ``heatmap`` baseline's.

Top-down adaptation (ours; the paper is bottom-up): the MSRA Gaussian of §1 with its σ0 per input size instead
of the bottom-up σ0 = 2; the α branch on the shared stride-4 features, as the code's ``conv_scale_layers``:
1x1 conv C -> K, BN, ReLU, depthwise 9x9 conv (groups K, padding 4), no activation. Init as the code's
``init_weights`` (``lib/models/pose_higher_hrnet.py``): every conv N(0, 0.001) with bias 0 and BN 1 and 0, then
the branch's last conv zeroed, so that training starts from α = 0 (Ĥ = H); the bottom-up ignore mask M
replaced by the per-keypoint weight; the regulariser masked to the 3σ window; decoding by a heatmap decoder.

Coordinates: the project's grid (ours, as the ``heatmap`` representation): cell i centred at
canonical x = (i + 0.5)·s, u = x/s - 0.5; decoders return cells, mapped back by x = (u + 0.5)·s. A flip is
an exact column reversal of both maps. Encodings: ``unbiased`` (default): centre u, whole map, the
``heatmap`` baseline's default, so that SAHR against heatmap measures the adaptation alone (ours); ``msra``
(the proposal's "MSRA Gaussian"): centre round(u) = floor(u + 0.5), drawn on the cells within 3σ0 per axis.
The weight is 0 for unlabelled or non-finite keypoints and where the 3σ0 window misses the map.

Choices the paper leaves open (ours):
- α is clamped to [-0.9, 1] in the target (ours: the Taylor form holds only for small
  |α|, and 1 + α > 0 keeps σ_eff finite), while the regulariser acts on the unclamped α, so an α pushed
  past a bound (where the clamp passes no gradient) is still pulled back towards 0.
- S, the support on which α scales the target and is regularised and on which WAHR's H^γ is taken, is the
  3σ0 window: for ``msra`` it is exactly {H > 0}, the code's mask. ``unbiased`` maps have no zero tail, and
  with γ = 0.01 even H = 1e-30 gives H^γ = 0.5, so without the window WAHR would weight the whole map as
  foreground and its background term |P| would never act; S keeps the two encodings comparable.
- The overall factor ½ makes the both-flags-off loss exactly ``JointsMSELoss``; it scales both of SWAHR's
  terms, so their balance (λ_reg = 1, the code's weight) is the code's.
- Default decoder ``dark``, one of the two the proposal names and the ``heatmap`` baseline's default, so the
  ablation differs from that baseline in the loss alone (with the encoding set to ``unbiased``); DARK's blur
  is sized from σ0. ``argmax`` is offered as the floor's reference; ``udp_dark`` is left out, as it belongs
  to the UDP grid, which SAHR's Gaussian does not use. Head for the heatmaps: a 1x1 conv (HRNet's final
  layer), as the ``heatmap`` head.

Defaults: ``scale_adaptive`` and ``weight_adaptive`` on, ``encoding="unbiased"``, ``decoder="dark"``, stride 4,
γ = 0.01, λ_reg = 1, σ0 per input size through ``ops.heatmap_sigma`` (64x64, 128x128 -> 1; 256x192 -> 2).
"""
from __future__ import annotations

import dataclasses
import math
from typing import ClassVar, Literal, NamedTuple, get_args

import torch
from torch import nn

from .. import ops
from ..decoders import get_decoder
from ..representation import (FlipPairs, Representation, check_choice, check_feature_stride, check_flag,
                              check_integer, check_number, init_head_, map_size)

Encoding = Literal["msra", "unbiased"]
DecoderName = Literal["argmax", "quarter_offset", "dark"]

_ALPHA_RANGE = (-0.9, 1.0)  # clamp of α in the Taylor target, see the module docstring
# DARK on float-centred maps, measured by the heatmap representation over σ in [1, 3]: below 0.013 cells.
_DARK_FLOOR_CELLS = 0.02
_FLOAT_SLACK_PX = 1e-3  # float32 rounding of coordinates below 10^3 px, with room


@dataclasses.dataclass(frozen=True)
class SAHRConfig:
    scale_adaptive: bool = True     # SAHR: α branch, target H^(1+α) (2nd-order Taylor), α regulariser
    weight_adaptive: bool = True    # WAHR: per-pixel weight H^γ|1 - P| + (1 - H^γ)|P|
    encoding: Encoding = "unbiased"
    decoder: DecoderName = "dark"
    sigma: float = 2.0              # σ0 in heatmap cells (per input size: ops.heatmap_sigma)
    stride: int = 4                 # input px per heatmap cell; must equal the feature stride
    gamma: float = 0.01             # WAHR's γ (the code's exponent)
    reg_weight: float = 1.0         # λ_reg of the α regulariser (the code's weight)

    def __post_init__(self):
        check_flag("scale_adaptive", self.scale_adaptive)
        check_flag("weight_adaptive", self.weight_adaptive)
        check_choice("encoding", self.encoding, get_args(Encoding))
        check_choice("decoder", self.decoder, get_args(DecoderName))
        # Below 1 cell the Gaussian vanishes between neighbouring cells and no decoder floor holds (see heatmap).
        check_number("sigma", self.sigma, at_least=1, unit=" heatmap cells")
        check_integer("stride", self.stride)
        check_number("gamma", self.gamma, above=0)
        check_number("reg_weight", self.reg_weight, at_least=0)


class SAHROutputs(NamedTuple):
    heatmaps: torch.Tensor       # (B, K, h, w)
    alpha: torch.Tensor | None   # (B, K, h, w) raw scale map; None without ``scale_adaptive``


class SAHRTargets(NamedTuple):
    heatmaps: torch.Tensor  # (B, K, h, w) unscaled Gaussian H, zero where the weight is 0
    support: torch.Tensor   # (B, K, h, w) 1 on the 3σ0 window S, where α acts and is regularised, else 0
    weight: torch.Tensor    # (B, K) 1 for a labelled keypoint whose window meets the map, else 0


class SAHRHead(nn.Module):
    """Features (B, C, h, w) -> heatmaps (1x1 conv) and, with ``scale_adaptive``, the α branch."""

    def __init__(self, in_channels: int, num_keypoints: int, scale_adaptive: bool):
        super().__init__()
        self.final_layer = init_head_(nn.Conv2d(in_channels, num_keypoints, kernel_size=1))
        self.alpha_branch = None
        if scale_adaptive:
            depthwise = nn.Conv2d(num_keypoints, num_keypoints, kernel_size=9, padding=4, groups=num_keypoints)
            self.alpha_branch = init_head_(nn.Sequential(
                nn.Conv2d(in_channels, num_keypoints, kernel_size=1),
                nn.BatchNorm2d(num_keypoints),
                nn.ReLU(inplace=True),
                depthwise,
            ))
            nn.init.zeros_(depthwise.weight)  # α = 0 at the start, as the code's init_weights
            nn.init.zeros_(depthwise.bias)

    def forward(self, features: torch.Tensor) -> SAHROutputs:
        alpha = None if self.alpha_branch is None else self.alpha_branch(features)
        return SAHROutputs(self.final_layer(features), alpha)


class SAHR(Representation):
    """SAHR / WAHR heatmap regression (see the module docstring)."""

    config_class: ClassVar[type] = SAHRConfig
    # The flags change only the loss; the ideal output (the unscaled map, α = 0) decodes the same.
    floor_variants: ClassVar[tuple[str, ...]] = ("encoding", "decoder")

    def __init__(self, config: SAHRConfig, input_size: tuple[int, int], num_keypoints: int):
        super().__init__(config, input_size, num_keypoints)
        map_size(self.input_size, config.stride)

    @classmethod
    def default_config(cls, input_size: tuple[int, int]) -> SAHRConfig:
        return SAHRConfig(sigma=ops.heatmap_sigma(input_size, SAHRConfig.stride))

    @property
    def floor_tolerance_px(self) -> float:
        """Bound on |decode(ideal_outputs(k)) - k| for interior keypoints, canonical input px, for this config.

        With d = s·√2 the cell diagonal in input px:
        - ``msra`` maps are symmetric about round(u), so every decoder returns round(u), at most half a cell
          from u per axis: d/2. The argmax returns round(u) on either encoding: d/2 too.
        - The quarter offset on ``unbiased`` maps moves round(u) a quarter cell towards u: at most d/4.
        - DARK on ``unbiased`` maps is exact on a sampled Gaussian up to its blur: measured below 0.013 cells
          by the heatmap representation for σ in [1, 3]; stated as 0.02 cells per axis, 0.02·d.
        Plus 1e-3 px of float32 rounding. α = 0 in the ideal output, so the flags do not enter.
        """
        if self.config.encoding == "msra" or self.config.decoder == "argmax":
            cells = 0.5
        elif self.config.decoder == "quarter_offset":
            cells = 0.25
        else:
            cells = _DARK_FLOOR_CELLS
        return cells * self.config.stride * math.sqrt(2) + _FLOAT_SLACK_PX

    def output_size(self) -> tuple[int, int]:
        height, width = self.input_size
        return height // self.config.stride, width // self.config.stride

    def build_head(self, in_channels: int, in_stride: int) -> nn.Module:
        check_feature_stride(self.name, in_stride, self.config.stride)
        return SAHRHead(in_channels, self.num_keypoints, self.config.scale_adaptive)

    def encode(self, keypoints: torch.Tensor, visible: torch.Tensor) -> SAHRTargets:
        """(B, K, 2) canonical keypoints, (B, K) visibility -> unscaled maps, α support, weights."""
        keypoints, weight = ops.sanitize_keypoints(keypoints, visible)
        u = keypoints / self.config.stride - 0.5  # (B, K, 2) cells
        msra = self.config.encoding == "msra"
        centre = torch.floor(u + 0.5) if msra else u
        maps, (window_x, window_y), weight = ops.gaussian_heatmaps(centre, self.output_size(), self.config.sigma,
                                                                   weight, truncate=msra)
        support = ops.weighted_outer(window_y.to(maps.dtype), window_x.to(maps.dtype), weight)
        return SAHRTargets(maps, support, weight)

    def loss(self, outputs: SAHROutputs, targets: SAHRTargets) -> torch.Tensor:
        config = self.config
        prediction, heatmap = outputs.heatmaps, targets.heatmaps
        w = targets.weight[..., None, None]
        target, regulariser = heatmap, prediction.new_zeros(())
        if config.scale_adaptive:
            alpha = outputs.alpha * targets.support
            scale = alpha.clamp(*_ALPHA_RANGE)
            positive = heatmap > 0
            log_h = torch.where(positive, heatmap.clamp_min(torch.finfo(heatmap.dtype).tiny).log(), 0.0)
            scaled_log = scale * log_h
            target = heatmap * (1 + scaled_log + 0.5 * scaled_log**2)  # H^(1+α) to second order
            regulariser = config.reg_weight * alpha.pow(2).mean()  # the support carries the keypoint weight
        squared_error = (prediction - target).pow(2)
        if config.weight_adaptive:
            foreground = (heatmap * targets.support).pow(config.gamma)  # unscaled H on S; 0^γ = 0 off S
            squared_error = squared_error * (foreground * (1 - prediction).abs() + (1 - foreground) * prediction.abs())
        return 0.5 * ((squared_error * w).mean() + regulariser)

    def decode(self, outputs: SAHROutputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Heatmaps (B, K, h, w) (α is discarded) -> (B, K, 2) canonical keypoints, (B, K) decoder scores."""
        cells, scores = get_decoder(self.config.decoder)(outputs.heatmaps, self.config.sigma)
        return (cells + 0.5) * self.config.stride, scores

    def flip_back(self, outputs: SAHROutputs, flip_pairs: FlipPairs) -> SAHROutputs:
        # Cell i mirrors to cell w - 1 - i on this grid; α is a per-pixel scalar, flipped like the map.
        perm = ops.flip_permutation(self.num_keypoints, flip_pairs, device=outputs.heatmaps.device)
        alpha = None if outputs.alpha is None else outputs.alpha.flip(-1)[:, perm]
        return SAHROutputs(outputs.heatmaps.flip(-1)[:, perm], alpha)

    def ideal_outputs(self, keypoints: torch.Tensor, visible: torch.Tensor) -> SAHROutputs:
        """The unscaled target map with α = 0 (Ĥ = H there): a network at zero loss and zero regulariser."""
        heatmaps = self.encode(keypoints, visible).heatmaps
        return SAHROutputs(heatmaps, torch.zeros_like(heatmaps) if self.config.scale_adaptive else None)
