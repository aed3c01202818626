"""Discrete Gaussian heatmaps (SimpleBaseline / HRNet) with MSRA, unbiased (DARK) or UDP encoding.

Method. Each keypoint gets an (h, w) map at output stride s holding a Gaussian of std ``sigma`` cells with
peak 1 (SimpleBaseline, Xiao et al., ECCV 2018, https://arxiv.org/abs/1804.06208; HRNet, Sun et al., CVPR
2019, https://arxiv.org/abs/1902.09212). The head is HRNet's final layer, a 1x1 conv on the shared stride-s
features (the SimpleBaseline deconvolutions are the shared neck), drawn from N(0, 0.001) with bias 0 as both
codes' ``init_weights`` (``lib/models/pose_resnet.py`` of microsoft/human-pose-estimation.pytorch,
``lib/models/pose_hrnet.py`` of leoxiaobin/deep-high-resolution-net.pytorch). The loss is ``JointsMSELoss``,
1/2 * mean over batch, joints and cells of (w_k P - w_k G)^2, with w_k the keypoint's weight. Decoding is
any decoder of ``heatbench.decoders`` (argmax, quarter offset, DARK, UDP-DARK), in cell units, followed by
the encoding's own map back to canonical input pixels; the score is the decoder's.

Encodings (mmpose ``generate_gaussian_heatmaps`` / ``_unbiased_`` / ``_udp_``), with u the keypoint in cells:
- ``msra``: centre round(u) = floor(u + 0.5), drawn on the window of cells within 3 sigma of it per axis;
- ``unbiased`` (DARK, Zhang et al., CVPR 2020, https://arxiv.org/abs/1910.06278): centre u, whole map;
- ``udp`` (Huang et al., CVPR 2020, https://arxiv.org/abs/1911.07524): centre u, drawn on the window
  around round(u).
The weight is 0 for unlabelled or non-finite keypoints and where no cell of the map lies within 3 sigma of
the centre (round(u), or u for ``unbiased``) on both axes; such maps are all zero. (Ours: mmpose's integer
version of this test lets a window that ends one cell before the left or top edge through.)

Grids, canonical x <-> cell units u (ours):
- ``msra`` and ``unbiased``: cell i is centred at canonical (i + 0.5) s, u = x / s - 0.5. The classic MSRA
  grid u = x_pc / s (cell i at canonical i s + 0.5) belongs with the ``warpAffine`` crop, whose half-pixel
  placement bias it partly absorbs and whose flip test then needs ``shift_heatmap`` (``docs/conventions.md``);
  heatbench's crop is exact in canonical coordinates, so the cells simply tile the input.
- ``udp``: its own grid, x_pc = x - 0.5 and u = x_pc (w - 1) / (W - 1): the first and last cells sit on the
  first and last pixel centres, one cell spans (W - 1) / (w - 1) input px.
Every grid is x = origin + u * cell with the mirror x -> W - x sending cell i to w - 1 - i, so ``flip_back``
reverses the columns and swaps the pairs, and no heatmap shift exists.

Defaults: ``encoding="unbiased"`` and ``decoder="dark"`` (DARK's pairing), ``stride=4``, and ``sigma`` from
the reference configs: 1 at 64x64 and 128x128 (the SimCC repository's low-resolution heatmap baselines,
``leeyegy/SimCC`` ``experiments/coco/``), 2 at 256x192 and 256x256, 3 at 384x288 (SimpleBaseline, HRNet and
mmpose configs). The rule
sigma = max(1, floor(L / 32 + 1/2)), with L the long side of the stride-4 map, reproduces that table and
sets other sizes (ours).
"""
from __future__ import annotations

import dataclasses
import math
from typing import ClassVar, Literal, NamedTuple, get_args

import torch
from torch import nn

from .. import ops
from ..decoders import DECODERS, get_decoder
from ..coords import interior_margin_px
from ..representation import (FlipPairs, Representation, check_choice, check_integer, check_number,
                              keypoint_map_head, map_size)

Encoding = Literal["msra", "unbiased", "udp"]
DecoderName = Literal["argmax", "quarter_offset", "dark", "udp_dark"]

# Floor of the DARK decoders on a float-centred map, in cell diagonals: measured at most 0.0097 (DARK at
# sigma = 1, whose 3-tap blur is the least Gaussian; UDP-DARK 0.001) for sigma in [1, 3], wherever the
# keypoint is at least 2 sigma + 1 cells from the map edge (below that the zero-padded blur skews the peak).
_DARK_FLOOR = 0.02
_FLOAT_SLACK_PX = 1e-3  # float32 rounding of coordinates below 10^3 px, with room


@dataclasses.dataclass(frozen=True)
class HeatmapConfig:
    encoding: Encoding = "unbiased"
    decoder: DecoderName = "dark"
    sigma: float = 2.0   # Gaussian std in heatmap cells; the DARK decoders size their blur from it too
    stride: int = 4      # the map is (H / stride, W / stride); a UDP cell spans (W - 1) / (w - 1) px, not stride

    def __post_init__(self):
        check_choice("encoding", self.encoding, get_args(Encoding))
        check_choice("decoder", self.decoder, DECODERS)
        # Below 1 cell the Gaussian vanishes between neighbouring cells: UDP-DARK's log clamp (1e-3) then
        # flattens its stencil and the quarter offset sees no neighbour, so no stated floor would hold.
        check_number("sigma", self.sigma, at_least=1, unit=" heatmap cells")
        check_integer("stride", self.stride)


class HeatmapTargets(NamedTuple):
    heatmaps: torch.Tensor  # (B, K, h, w) target maps, zero where the weight is 0
    weights: torch.Tensor   # (B, K) 1 for a labelled keypoint whose window meets the map, else 0


class Heatmap(Representation):
    """Discrete Gaussian heatmaps (see the module docstring). Outputs are (B, K, h, w) tensors.

    ``output_stride_px`` (x, y): input px between neighbouring cell centres, s or the UDP cell; shifting a
    keypoint by it shifts its map by exactly one cell. ``origin_px``: canonical coordinate of cell 0's centre.
    """

    config_class: ClassVar[type] = HeatmapConfig
    floor_variants: ClassVar[tuple[str, ...]] = ("encoding", "decoder")

    def __init__(self, config: HeatmapConfig, input_size: tuple[int, int], num_keypoints: int):
        super().__init__(config, input_size, num_keypoints)
        # the UDP cell spans two pixel centres: (W - 1) / (w - 1)
        self.map_size = map_size(self.input_size, config.stride, min_cells=2 if config.encoding == "udp" else 1)
        if config.encoding == "udp":
            self.origin_px = 0.5  # cell 0 on the first pixel centre
        else:
            self.origin_px = config.stride / 2

    @property
    def output_stride_px(self) -> tuple[float, float]:
        if self.config.encoding == "udp":
            (height, width), (map_height, map_width) = self.input_size, self.map_size
            return (width - 1) / (map_width - 1), (height - 1) / (map_height - 1)
        return float(self.config.stride), float(self.config.stride)

    @classmethod
    def default_config(cls, input_size: tuple[int, int]) -> HeatmapConfig:
        long_side = max(input_size) / HeatmapConfig.stride
        return HeatmapConfig(sigma=max(1, math.floor(long_side / 32 + 0.5)))

    @property
    def floor_tolerance_px(self) -> float:
        """Bound on |decode(ideal_outputs(k)) - k| for interior keypoints (``heatbench.floor``), input px.

        In cell diagonals d (s * sqrt(2), or the UDP cell's diagonal), plus 1e-3 px of float32 rounding. The
        argmax of any of the three encodings is round(u), the cell nearest the keypoint: 0.5 d. Then:
        - argmax: 0.5 d.
        - quarter offset: MSRA maps are symmetric about round(u), so it does not move: 0.5 d. On a
          float-centred map the larger neighbour lies on u's side, and a quarter cell towards it leaves
          at most a quarter cell per axis: 0.25 d.
        - DARK and UDP-DARK: exact on a sampled Gaussian except for the blur (its truncated kernel is not
          exactly Gaussian, and its zero padding skews a peak near the map edge); measured <= 0.0097 d for
          sigma in [1, 3] wherever the keypoint is >= 2 sigma + 1 cells from the edge, stated as 0.02 d
          (0.5 d more on MSRA maps, whose centre is rounded). Where the interior margin is narrower than
          that (a wide Gaussian on a small map, e.g. sigma = 2 at 64x64) only the one-cell step guard
          bounds the error: 0.5 + 1 cells per axis, 1.5 d.
        """
        diagonal = math.hypot(*self.output_stride_px)
        rounded = 0.5 if self.config.encoding == "msra" else 0.0
        if self.config.decoder == "argmax":
            cells = 0.5
        elif self.config.decoder == "quarter_offset":
            cells = rounded or 0.25
        elif self._interior_margin_cells() >= 2 * self.config.sigma + 1:
            cells = rounded + _DARK_FLOOR
        else:
            cells = 1.5
        return cells * diagonal + _FLOAT_SLACK_PX

    def _interior_margin_cells(self) -> float:
        """Cells between the map edge and the nearest interior keypoint, on the tighter axis."""
        height, width = self.input_size
        return min((interior_margin_px(side) - self.origin_px) / cell + 0.5
                   for side, cell in ((width, self.output_stride_px[0]), (height, self.output_stride_px[1])))

    def output_size(self) -> tuple[int, int]:
        return self.map_size

    def build_head(self, in_channels: int, in_stride: int) -> nn.Module:
        return keypoint_map_head(self.name, in_channels, in_stride, self.config.stride, self.num_keypoints)

    def _cell(self, like: torch.Tensor) -> torch.Tensor:
        """(2,) cell size in input px, (x, y): canonical x = origin_px + u * cell."""
        return torch.tensor(self.output_stride_px, device=like.device, dtype=like.dtype)

    def encode(self, keypoints: torch.Tensor, visible: torch.Tensor) -> HeatmapTargets:
        """(B, K, 2) canonical keypoints, (B, K) visibility -> (B, K, h, w) maps and (B, K) weights."""
        keypoints, weight = ops.sanitize_keypoints(keypoints, visible)
        u = (keypoints - self.origin_px) / self._cell(keypoints)  # (B, K, 2) cell units
        rounded = torch.floor(u + 0.5)
        centre = rounded if self.config.encoding == "msra" else u
        window_centre = u if self.config.encoding == "unbiased" else rounded
        heatmaps, _, weight = ops.gaussian_heatmaps(centre, self.map_size, self.config.sigma, weight, window_centre,
                                                    truncate=self.config.encoding != "unbiased")
        return HeatmapTargets(heatmaps, weight)

    def loss(self, outputs: torch.Tensor, targets: HeatmapTargets) -> torch.Tensor:
        weight = targets.weights[..., None, None]
        return 0.5 * ((outputs - targets.heatmaps) * weight).pow(2).mean()

    def decode(self, outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, K, h, w) maps -> (B, K, 2) canonical keypoints and (B, K) decoder scores."""
        coords, scores = get_decoder(self.config.decoder)(outputs, self.config.sigma)
        return coords * self._cell(coords) + self.origin_px, scores

    def flip_back(self, outputs: torch.Tensor, flip_pairs: FlipPairs) -> torch.Tensor:
        perm = ops.flip_permutation(self.num_keypoints, flip_pairs, device=outputs.device)
        return outputs.flip(-1)[:, perm]

    def ideal_outputs(self, keypoints: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """The target maps: what a network trained to zero loss emits."""
        return self.encode(keypoints, visible).heatmaps
