"""Heatmap + offset: a coarse map finds the cell, per-pixel offset maps carry the sub-cell position.

Method: each keypoint gets a class map on the stride-``stride`` grid and two offset maps (x, y) that point
from a map cell to the keypoint; decoding takes the argmax of the class map and adds the offset read there,
so the quantisation of the argmax is undone by regression instead of by a Taylor step. Two variants:

- ``udp_combined`` (default): mmpose's ``UDPHeatmap(heatmap_type='combined')`` with ``CombinedTargetMSELoss``
  (Huang et al., "The Devil is in the Details: Delving into Unbiased Data Processing for Human Pose
  Estimation", CVPR 2020, https://arxiv.org/abs/1911.07524). Class map: a binary disk of radius
  r = ``radius_factor``·max(w, h) map px around the keypoint; offsets (u - i)/r at *every* cell. Loss:
  ½·MSE(w·P, w·G) + ½·MSE(G·ô_x, G·o_x) + ½·MSE(G·ô_y, G·o_y), each MSE a mean over batch and pixels,
  averaged over joints, so the offsets are supervised on the disk only. Decode: blur the class map with a
  (2·``blur_kernel`` + 1)-tap Gaussian (cv2's σ for that size, 3.8 px for 23 taps, reflect-101 border, as
  mmpose's ``cv2.GaussianBlur(..., 0)``), argmax, add r·offset read at the argmax. Score: the blurred
  class-map maximum (mmpose takes the maximum after the in-place blur).
- ``centernet``: a CenterNet-style map (Zhou et al., "Objects as Points", 2019,
  https://arxiv.org/abs/1904.07850) applied per keypoint in the top-down crop: the MSRA Gaussian of §1
  (integer centre, 3σ window, σ per input size) plus a sub-pixel offset supervised only at the peak cell
  with CenterNet's L1 (``RegL1Loss``: the summed |ô - o| at the peak over both axes, divided by the number
  of supervised entries). Decode: argmax of the raw map plus the offset read there. Score: the maximum.

Coordinates: canonical input pixels at the boundary; inside, each variant uses its own map grid and converts
back in ``decode`` (``docs/conventions.md``). ``udp_combined`` uses UDP's grid, u = x_pc·(w - 1)/(W - 1) with the
pixel-centre coordinate x_pc = x - 0.5 (back: x = u·(W - 1)/(w - 1) + 0.5); ``centernet`` uses the
project's grid, cell i centred at canonical x = (i + 0.5)·s, u = x/s - 0.5 (ours:
heatbench's crop is exact in canonical coordinates, so the classic u = x_pc/s grid that compensates
warpAffine's half-pixel bias is not needed). On both grids a horizontal flip is an exact column reversal.

Choices the papers leave open (ours):
- ``centernet``'s offset is *centred*, o = u - round(u) in [-0.5, 0.5) with round(u) = floor(u + 0.5): the
  keypoint relative to the centre of the cell that contains it. CenterNet's o = u' - floor(u') with u' = x/s
  is the same quantity plus the constant 0.5 (same peak cell, floor(x/s)), but it does not change sign under
  a flip; the centred one does, so ``flip_back`` is one negation for both variants.
- ``centernet`` trains the map with the MSE of §1 (½·mean((w·P - w·G)²)), not CenterNet's penalty-reduced
  focal loss on sigmoid outputs, so that it differs from the ``heatmap`` baseline only by the offset. The
  offset loss weight is CenterNet's λ_off = 1.
- Both variants' offset *targets* are dense, (u - i) at every cell (mmpose's UDP target is dense already;
  CenterNet's is its value at the peak, extended to the linear field it samples), but only the disk
  (``udp_combined``) or the peak cell (``centernet``) is supervised. The ideal outputs are what a network at
  zero loss emits: offsets on the supervised cells and 0 elsewhere, so the codec floor shows any decode
  whose argmax leaves the supervised cells.
- The decode blur scales with the map (ours): mmpose's ``blur_kernel_size`` = 11 is sized for the 64x48 maps
  of its 256x192 configs, and ``default_config`` keeps its ratio to the long side, round(11 L / 64) for L
  cells (3 at 16x16, 6 at 32x32). Unscaled, its 23 taps of σ 3.8 cells on a 16x16 map pull the peak off the
  0.875-cell disk towards the reflect-101 border, where no offset is supervised.
- The disk radius is at least 0.75 cells: mmpose's r = 0.0546875·max(w, h) falls below sqrt(2)/2 cells on
  maps under 13 cells (the 8x8 maps of a 32x32 input), where a keypoint far from every cell centre would have
  no disk cell and so no supervision at all; from 16x16 maps up the rule is mmpose's unchanged.
- A keypoint whose class map misses the output map (no disk cell, or a Gaussian window outside it) gets
  weight 0, as MSRA's window rule; mmpose's combined encoder keeps it.
- The head is a 1x1 convolution to 3K channels (class, x offset, y offset per keypoint) on the shared
  stride-4 features, HRNet's final layer, initialised N(0, 0.001) with bias 0 as mmpose's ``HeatmapHead``
  (``mmpose/models/heads/heatmap_heads/heatmap_head.py``, ``default_init_cfg``), which the combined
  config's head is.

Defaults: ``udp_combined``, stride 4, radius_factor 0.0546875 (mmpose; 3.5 px on a 64-px map, 0.875 px on the
16-px map of a 64x64 input), blur_kernel round(11 L / 64) for a map of long side L (11 at 256x192, mmpose's
``blur_kernel_size``). ``centernet``'s σ follows the
§1 heatmap table through ``ops.heatmap_sigma`` (64x64 and 128x128 -> 1, 256x192 and 256x256 -> 2, 384x288 -> 3
map px, and the same rule elsewhere, as the ``heatmap`` representation).
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal, NamedTuple, get_args

import torch
from torch import nn

from .. import ops
from ..decoders.argmax import argmax_2d, take_2d
from ..representation import (FlipPairs, Representation, check_choice, check_feature_stride, check_integer,
                              check_number, init_head_, map_size)

Variant = Literal["udp_combined", "centernet"]

# Every point lies within sqrt(2)/2 cells of a cell centre: a disk of at least this radius holds a cell for
# every keypoint on the map, so none goes unsupervised (ours; mmpose's rule gives 0.44 cells on 8x8 maps).
_MIN_RADIUS_CELLS = 0.75
# mmpose's UDPHeatmap ``blur_kernel_size`` and the long side of the maps its configs use it on (256x192 inputs)
_MMPOSE_BLUR_KERNEL = 11
_MMPOSE_MAP_LONG_SIDE = 64


@dataclasses.dataclass(frozen=True)
class OffsetConfig:
    variant: Variant = "udp_combined"
    stride: int = 4                   # input px per map cell; must equal the feature stride
    sigma: float = 2.0                # centernet: Gaussian std in map px (per input size: ops.heatmap_sigma)
    radius_factor: float = 0.0546875  # udp_combined: disk radius as a fraction of max(map w, h) (mmpose)
    blur_kernel: int = 11             # udp_combined: the decode blur has 2 * blur_kernel + 1 taps (mmpose)

    def __post_init__(self):
        check_choice("variant", self.variant, get_args(Variant))
        check_integer("stride", self.stride)
        check_integer("blur_kernel", self.blur_kernel, minimum=0)
        check_number("sigma", self.sigma, above=0)
        check_number("radius_factor", self.radius_factor, above=0)


class OffsetOutputs(NamedTuple):
    heatmaps: torch.Tensor  # (B, K, h, w) class maps
    offsets: torch.Tensor   # (B, K, 2, h, w) (x, y) offsets from each cell to the keypoint, in offset units


class OffsetTargets(NamedTuple):
    heatmaps: torch.Tensor  # (B, K, h, w) class-map target, already multiplied by the weight
    offsets: torch.Tensor   # (B, K, 2, h, w) dense offset target
    mask: torch.Tensor      # (B, K, h, w) where the offsets are supervised (disk or peak cell), times the weight
    weight: torch.Tensor    # (B, K) 1 for a labelled keypoint whose class map meets the output map


class OffsetHead(nn.Module):
    """Features (B, C, h, w) -> 1x1 conv to 3K channels -> class maps (B, K, h, w), offsets (B, K, 2, h, w)."""

    def __init__(self, in_channels: int, num_keypoints: int):
        super().__init__()
        self.final_layer = init_head_(nn.Conv2d(in_channels, 3 * num_keypoints, kernel_size=1))

    def forward(self, features: torch.Tensor) -> OffsetOutputs:
        maps = self.final_layer(features)
        maps = maps.view(maps.shape[0], -1, 3, *maps.shape[-2:])  # (B, K, 3, h, w): mmpose's channel order
        return OffsetOutputs(maps[:, :, 0], maps[:, :, 1:])


class Offset(Representation):
    """Heatmap + offset, UDP combined or CenterNet-style; see the module docstring."""

    config_class: ClassVar[type] = OffsetConfig
    floor_variants: ClassVar[tuple[str, ...]] = ("variant",)
    # Both variants decode the ideal outputs exactly in the interior: the argmax cell i lies on the supervised
    # cells, where i plus the offset (u - i) is u. What remains is float32 rounding of a few operations on map
    # coordinates below 100 and input coordinates below 10^3 px (an ulp of 6e-5 px there); 1e-3 px leaves room.
    floor_tolerance_px: ClassVar[float] = 1e-3

    def __init__(self, config: OffsetConfig, input_size: tuple[int, int], num_keypoints: int):
        super().__init__(config, input_size, num_keypoints)
        height, width = self.input_size
        stride = config.stride
        map_height, map_width = map_size(self.input_size, stride, min_cells=2)
        # u = (x - origin) * scale per axis (x, y), canonical input px -> map index units.
        if config.variant == "udp_combined":
            self._origin = (0.5, 0.5)
            self._scale = ((map_width - 1) / (width - 1), (map_height - 1) / (height - 1))
            self._offset_unit = max(config.radius_factor * max(map_width, map_height), _MIN_RADIUS_CELLS)  # r, cells
        else:
            self._origin = (stride / 2, stride / 2)
            self._scale = (1 / stride, 1 / stride)
            self._offset_unit = 1.0

    @classmethod
    def default_config(cls, input_size: tuple[int, int]) -> OffsetConfig:
        """σ per input size (``ops.heatmap_sigma``) and the decode blur scaled with the map: mmpose's 11 for the
        64-cell long side of its 256x192 configs, round(11 L / 64) for a long side of L cells (ours)."""
        long_side = max(input_size) // OffsetConfig.stride
        return OffsetConfig(sigma=ops.heatmap_sigma(input_size, OffsetConfig.stride),
                            blur_kernel=max(1, round(_MMPOSE_BLUR_KERNEL * long_side / _MMPOSE_MAP_LONG_SIDE)))

    def output_size(self) -> tuple[int, int]:
        height, width = self.input_size
        return height // self.config.stride, width // self.config.stride

    def build_head(self, in_channels: int, in_stride: int) -> nn.Module:
        check_feature_stride(self.name, in_stride, self.config.stride)
        return OffsetHead(in_channels, self.num_keypoints)

    def _to_map(self, keypoints: torch.Tensor) -> torch.Tensor:
        """(..., 2) canonical input px -> (..., 2) map index units of this variant's grid."""
        origin = keypoints.new_tensor(self._origin)
        return (keypoints - origin) * keypoints.new_tensor(self._scale)

    def _from_map(self, coords: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`_to_map`."""
        return coords / coords.new_tensor(self._scale) + coords.new_tensor(self._origin)

    def encode(self, keypoints: torch.Tensor, visible: torch.Tensor) -> OffsetTargets:
        """(B, K, 2) canonical keypoints, (B, K) visibility -> class maps, dense offsets, offset mask, weight."""
        keypoints, weight = ops.sanitize_keypoints(keypoints, visible)
        map_height, map_width = self.output_size()
        u = self._to_map(keypoints)  # (B, K, 2)
        cols = torch.arange(map_width, device=u.device, dtype=u.dtype)
        rows = torch.arange(map_height, device=u.device, dtype=u.dtype)
        # the offsets are separable, (u_x - i) / r on x and (u_y - j) / r on y: built per axis, written once
        offset_x = (u[..., 0, None] - cols) / self._offset_unit  # (B, K, w)
        offset_y = (u[..., 1, None] - rows) / self._offset_unit  # (B, K, h)
        offsets = u.new_empty(*u.shape[:2], 2, map_height, map_width)
        offsets[:, :, 0] = offset_x[..., None, :]
        offsets[:, :, 1] = offset_y[..., :, None]
        if self.config.variant == "udp_combined":
            # mmpose's disk test (x_offset² + y_offset² <= 1) in the same units, so the disk is the cells within r.
            # The disk holds a cell when its nearest cell does: the smallest sum is the sum of the smallest terms.
            square_x, square_y = offset_x.square(), offset_y.square()
            holds_a_cell = square_x.amin(dim=-1) + square_y.amin(dim=-1) <= 1
            weight = weight * holds_a_cell.to(weight.dtype)
            disk = square_x[..., None, :] + square_y[..., :, None] <= 1  # (B, K, h, w)
            classes = mask = torch.where(disk, weight[..., None, None], 0.0)
        else:
            centre = torch.floor(u + 0.5)  # round(u): the cell containing the keypoint, floor(x / s)
            classes, _, weight = ops.gaussian_heatmaps(centre, (map_height, map_width), self.config.sigma, weight)
            # the peak cell: the outer product of its row and its column
            mask = ops.weighted_outer((rows == centre[..., 1, None]).to(u.dtype),
                                      (cols == centre[..., 0, None]).to(u.dtype), weight)
        return OffsetTargets(classes, offsets, mask, weight)

    def loss(self, outputs: OffsetOutputs, targets: OffsetTargets) -> torch.Tensor:
        w = targets.weight[..., None, None]
        class_loss = 0.5 * ((outputs.heatmaps - targets.heatmaps) * w).pow(2).mean()
        residual = (outputs.offsets - targets.offsets) * targets.mask.unsqueeze(2)  # (B, K, 2, h, w)
        if self.config.variant == "udp_combined":
            # ½·MSE per axis, each a mean over (B, h, w), averaged over K: the mean over all (B, K, 2, h, w).
            return class_loss + residual.pow(2).mean()
        # RegL1Loss: the mask counts each supervised peak once per axis.
        return class_loss + residual.abs().sum() / (2 * targets.mask.sum()).clamp_min(1)

    def decode(self, outputs: OffsetOutputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Class maps (B, K, h, w), offsets (B, K, 2, h, w) -> (B, K, 2) canonical keypoints, (B, K) scores."""
        heatmaps = outputs.heatmaps
        if self.config.variant == "udp_combined":
            heatmaps = ops.gaussian_blur(heatmaps, 2 * self.config.blur_kernel + 1)
        index, scores = argmax_2d(heatmaps)  # (B, K, 2) long (x, y)
        x, y = index.unbind(-1)
        offset = torch.stack([take_2d(outputs.offsets[:, :, axis], x, y) for axis in (0, 1)], dim=-1)
        return self._from_map(index.to(offset.dtype) + self._offset_unit * offset), scores

    def flip_back(self, outputs: OffsetOutputs, flip_pairs: FlipPairs) -> OffsetOutputs:
        # On both grids cell i mirrors to cell w - 1 - i and u to w - 1 - u, so (u - i) changes sign exactly.
        perm = ops.flip_permutation(self.num_keypoints, flip_pairs, device=outputs.heatmaps.device)
        offsets = outputs.offsets.flip(-1)[:, perm]
        sign = offsets.new_tensor([-1.0, 1.0]).view(1, 1, 2, 1, 1)
        return OffsetOutputs(outputs.heatmaps.flip(-1)[:, perm], offsets * sign)

    def ideal_outputs(self, keypoints: torch.Tensor, visible: torch.Tensor) -> OffsetOutputs:
        """What a network trained to zero loss emits: the class maps, and the offsets where the loss supervises
        them (the disk or the peak cell); elsewhere the loss leaves them free, and they are 0 here."""
        targets = self.encode(keypoints, visible)
        return OffsetOutputs(targets.heatmaps, targets.offsets * targets.mask.unsqueeze(2))
