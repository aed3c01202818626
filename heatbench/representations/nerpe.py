"""NerPE: a continuous heatmap, regressed by an implicit neural representation and decoded at any resolution.

Method. A neck squeezes the shared backbone features into a coarse grid of cells (``cells`` on the long side,
C=256 channels each). A query point q anywhere in the image is scored for all K keypoints by one MLP shared
over queries, whose input is a cell's feature and q's position r relative to that cell's centre, in half-cell
units (optionally positionally encoded). With the local ensemble (from LIIF) the four cells nearest to q are
each queried and, at test time, blended with bilinear weights (each cell weighted by the area of the
rectangle spanned by q and the diagonally opposite cell's centre); in training the four un-blended
predictions are each regressed to the continuous target (Gaussian or Laplace in q, centred on the keypoint,
not truncated) at S x S random query points per cell, redrawn every call. Decoding samples the field at U
queries per cell per axis and takes the argmax (standard), or coarse-to-fine (progressive, NerPE-p): a dense
map at U0 queries per cell, then levels that double U and evaluate only a k x k window of the finer grid
around the previous argmax, so the full high-resolution map is never built.

Paper: Hu et al., "Continuous Heatmap Regression for Pose Estimation via Implicit Neural Representation",
NeurIPS 2024; released code github.com/hushengxiang/NerPE @83f0c21.

Coordinates. heatbench's canonical coordinates (pixel i covers [i, i+1)) are NerPE's corner coordinates, so
no half-pixel shift appears anywhere: a canonical point (x, y) of an (H, W) input is normalised isotropically
to ``((x - W/2), (y - H/2)) / (max(W, H) / 2)``, so the long side spans [-1, 1] and the short side
+-min/max. Query points, targets and the field's interface all use these normalised units; sigma and b are
normalised too (sigma = 0.06 is 3.84 px at 128, 7.68 px at 256). Only the nearest-cell lookup rescales
per axis (the grid-sample frame, in which each axis of the cell grid spans [-1, 1]).

Defaults (every released config): 8 cells on the long side (8x8 at 64x64 and 128x128, 6x8 at 256x192), C=256,
MLP hidden (256, 256, 128, 128, 128) with ReLU and linear K outputs, no positional encoding (L=0), local
ensemble on, sub-division sampling with S=8 (64 queries per cell), Gaussian sigma 0.06 (Laplace b 0.09),
unlabelled keypoints masked (``REG_INVIS_CONF_TO_ZERO: false``), U=32 queries per cell per axis at test time.
The release has no config below 128x128; there ``default_config`` keeps the 128x128 config in input pixels
(sigma = 0.12 and S = 4 at 64x64; ours, see ``NerPE.default_config``).

Choices the paper and release leave open, all ours:
- the grid's short side is ``cells * short / long`` and must be an integer (the release sets it by hand);
- the zoom halves with stride-2 convs while both axes stay at least twice the grid, doubles with deconvs
  while both stay at most half of it, and closes any remaining non-power-of-two gap with adaptive average
  pooling (the release only has power-of-two ratios);
- the first MLP layer is split into its cell-feature part, computed once per cell, and its coordinate part,
  computed per query; this is the same affine map as one layer on the concatenation, only cheaper;
- the nearest cell is ``floor((g + 1) * n / 2)`` of the clamped grid coordinate g, which is what
  ``grid_sample(mode="nearest", align_corners=False)`` picks except exactly on a cell border (measure zero),
  where it rounds half to even;
- the release's optional 2-layer projection of the positional encoding is not implemented (unused by every
  released config);
- progressive decoding (NerPE-p) is our reconstruction, since its settings are unreleased: U0 = 4, doubling
  to U = 32, a 9x9 window per keypoint on the grid of the finer level that covers the two finer queries of
  the previous argmax on each axis (with k = 9: three finer queries before them, four after), moved inside
  the map at the borders. k = 9, because a trained map's peak is flatter than the ideal one, so the coarse
  argmax can sit up to two coarse steps from the fine one; ``run`` reports on every trained model how often
  progressive and standard decoding agree within one query step;
- test-time queries run in float32 with autocast off, whatever the features' dtype, so that the argmax does
  not suffer bf16 rounding.
"""
from __future__ import annotations

import abc
import dataclasses
import math
import typing
from typing import ClassVar, Literal, NamedTuple

import torch
from torch import nn

from .. import ops
from ..decoders.argmax import max_last
from ..representation import FlipPairs, Representation, check_choice, check_integer, check_number, init_head_

Sampling = Literal["uniform", "random"]
Target = Literal["gaussian", "laplace"]
Decoding = Literal["standard", "progressive"]

# Elements of the widest intermediate per test-time pass over a chunk of queries: 128 MiB in float32, so a
# dense map of any size and batch needs a few hundred MiB; much smaller chunks run slower.
_ELEMENTS_PER_CHUNK = 1 << 25
# Clamp of the shifted grid coordinates, as in LIIF, so that a shift beyond the border picks the border cell.
_GRID_CLAMP = 1 - 1e-6
# The released config with the smallest input (128x128), which default_config keeps in pixels below it.
_DENSEST_RELEASED_LONG_SIDE = 128
# Added to each blending area, as in LIIF, so that a query exactly on a cell centre has finite weights.
_AREA_EPS = 1e-9


def _query_in_chunks(fn, points: torch.Tensor, elements_per_point: int) -> torch.Tensor:
    """``fn`` ((B, q, 2) -> (B, K, q)) over chunks of the (B, Q, 2) points, concatenated to (B, K, Q)."""
    chunk = max(1, _ELEMENTS_PER_CHUNK // elements_per_point)
    return torch.cat([fn(part) for part in points.split(chunk, dim=1)], dim=-1)


@dataclasses.dataclass(frozen=True)
class NerPEConfig:
    cells: int = 8                      # cells on the long side of the grid ("feat_8x8"); the short side follows
    channels: int = 256                 # C, neck output channels = cell feature size
    hidden: tuple[int, ...] = (256, 256, 128, 128, 128)  # MLP hidden widths, ReLU between
    pe_frequencies: int = 0             # L; 0 feeds raw r (2 dims), L >= 1 adds sin/cos of 2^i pi r (4L + 2 dims)
    local_ensemble: bool = True         # four nearest cells, bilinear blend at test time (off: nearest cell)
    sampling: Sampling = "uniform"      # uniform: one point per sub-cell of an S x S division; random: S^2 i.i.d.
    samples_per_axis: int = 8           # S; S^2 training queries per cell
    target: Target = "gaussian"
    sigma: float = 0.06                 # Gaussian std, normalised units (long side spans 2)
    laplace_b: float = 0.09             # Laplace scale, normalised units
    unlabelled_to_zero: bool = False    # regress unlabelled keypoints to 0 instead of masking them
    queries_per_cell: int = 32          # U, test-time queries per cell per axis (the final level when progressive)
    decoding: Decoding = "standard"
    progressive_start: int = 4          # U0 of progressive level 0 (ours); U / U0 must be a power of two
    progressive_window: int = 9         # k, finer queries per axis evaluated around each keypoint per level (ours)

    def __post_init__(self):
        object.__setattr__(self, "hidden", tuple(int(width) for width in self.hidden))
        check_choice("sampling", self.sampling, typing.get_args(Sampling))
        check_choice("target", self.target, typing.get_args(Target))
        check_choice("decoding", self.decoding, typing.get_args(Decoding))
        for name in ("cells", "channels", "samples_per_axis", "queries_per_cell", "progressive_start"):
            check_integer(name, getattr(self, name))
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"hidden must be a non-empty tuple of positive widths, got {self.hidden}")
        check_integer("pe_frequencies", self.pe_frequencies, minimum=0)
        check_number("sigma", self.sigma, above=0)
        check_number("laplace_b", self.laplace_b, above=0)
        levels, remainder = divmod(self.queries_per_cell, self.progressive_start)
        if self.decoding == "progressive" and (remainder or levels & (levels - 1)):
            raise ValueError(f"queries_per_cell={self.queries_per_cell} must be progressive_start="
                             f"{self.progressive_start} times a power of two (each progressive level doubles U)")
        if self.progressive_window < 2:
            # the window must at least hold the two finer queries that split the previous argmax
            raise ValueError(f"progressive_window={self.progressive_window} must be at least 2")


# --- the MLP and the neck --------------------------------------------------------------------------------


def positional_encoding(r: torch.Tensor, frequencies: int) -> torch.Tensor:
    """(..., 2) relative coordinates -> (..., 2 + 4L): [r, sin(2^i pi r), cos(2^i pi r) for i < L]."""
    if frequencies == 0:
        return r
    scales = math.pi * 2.0 ** torch.arange(frequencies, device=r.device, dtype=r.dtype)
    angles = (r.unsqueeze(-1) * scales).flatten(-2)  # (..., 2L)
    return torch.cat([r, angles.sin(), angles.cos()], dim=-1)


class QueryMLP(nn.Module):
    """The decoder MLP, shared over queries: [cell feature (C), PE(r)] -> hidden -> K scores.

    The first layer is split: ``project_cells`` applies its feature part once per cell, ``forward`` adds the
    coordinate part per query. Together they are one affine layer on the concatenated input.
    """

    def __init__(self, channels: int, hidden: tuple[int, ...], num_keypoints: int, pe_frequencies: int):
        super().__init__()
        self.pe_frequencies = pe_frequencies
        self.cell_proj = nn.Linear(channels, hidden[0])
        self.coord_proj = nn.Linear(2 + 4 * pe_frequencies, hidden[0], bias=False)
        layers: list[nn.Module] = []
        for width_in, width_out in zip(hidden, hidden[1:] + (num_keypoints,)):
            layers += [nn.ReLU(inplace=True), nn.Linear(width_in, width_out)]
        self.layers = nn.Sequential(*layers)

    def project_cells(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, n_h, n_w) cell features -> (B, n_h * n_w, hidden[0]), cells in row-major order."""
        return self.cell_proj(features.flatten(2).transpose(1, 2))

    def forward(self, cell_rows: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """(..., hidden[0]) projected cell features and (..., 2) relative coordinates -> (..., K) scores."""
        encoded = positional_encoding(r, self.pe_frequencies).to(cell_rows.dtype)
        # one addmm instead of a matmul and an add: the (rows, hidden[0]) activation is decoding's widest tensor.
        # The weight goes in row-major, so that its gradient is encoded^T @ grad: autograd computes a column-major
        # one as (grad^T @ encoded)^T, a 2-column product that took 109 ms against 20 (B = 16 at 64x64, CPU).
        first = torch.addmm(cell_rows.reshape(-1, cell_rows.shape[-1]), encoded.reshape(-1, encoded.shape[-1]),
                            self.coord_proj.weight.t().contiguous())
        return self.layers(first).view(*r.shape[:-1], -1)


def mlp_macs_per_query(config: NerPEConfig, num_keypoints: int) -> int:
    """Multiply-accumulates of one evaluation of the paper's MLP (1x1 convs on [cell feature, PE(r)])."""
    widths = (config.channels + 2 + 4 * config.pe_frequencies,) + config.hidden + (num_keypoints,)
    return sum(width_in * width_out for width_in, width_out in zip(widths, widths[1:]))


def _conv_bn_relu(conv: nn.Module, channels: int) -> list[nn.Module]:
    return [conv, nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]


def build_neck(in_channels: int, channels: int, in_size: tuple[int, int], grid: tuple[int, int]) -> nn.Sequential:
    """3x3 conv to C + BN + ReLU, zoom from ``in_size`` (h, w) to ``grid`` (n_h, n_w), then a 1x1 conv.

    Init as the release: the 3x3 conv and its BN belong to the backbone there (``final_layers`` of
    ``lib/models/pose_resnet.py``), whose ``init_weights`` draws convs from N(0, 0.001) and sets BN to 1 and 0;
    the zoom (``FeatZoomModule`` in ``lib/models/cohr_net.py``) and the query MLP are never re-initialised
    (``ImplicitPoseEstNet.init_weights`` only calls the backbone's), so they keep PyTorch's default init.
    """
    layers = _conv_bn_relu(nn.Conv2d(in_channels, channels, 3, padding=1, bias=False), channels)
    init_head_(nn.Sequential(*layers))
    (h, w), (n_h, n_w) = in_size, grid
    while h >= 2 * n_h and w >= 2 * n_w:
        layers += _conv_bn_relu(nn.Conv2d(channels, channels, 3, stride=2, padding=1, bias=False), channels)
        h, w = (h + 1) // 2, (w + 1) // 2
    while 2 * h <= n_h and 2 * w <= n_w:
        layers += _conv_bn_relu(nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1, bias=False),
                                channels)
        h, w = 2 * h, 2 * w
    if (h, w) != (n_h, n_w):
        layers.append(nn.AdaptiveAvgPool2d((n_h, n_w)))
    layers.append(nn.Conv2d(channels, channels, 1))
    return nn.Sequential(*layers)


# --- fields: what the head returns and what decode reads ----------------------------------------------------


class KeypointField(abc.ABC):
    """A continuous map from normalised query points to K keypoint scores, for a batch of B images.

    ``query(points)`` takes (B, Q, 2) points (x, y) in NerPE's normalised frame (a leading 1 broadcasts over
    the batch) and returns (B, K, Q) float32 scores; ``query_grid(xs, ys)`` the same on the product grid of two
    axes, which a field may evaluate faster (the ideal Gaussian field is separable). Fields are not tensors:
    ``map_tensors`` does not apply to them; use the representation's ``flip_back`` and ``merge_flipped``.
    """

    batch_size: int
    device: torch.device

    @abc.abstractmethod
    def query(self, points: torch.Tensor) -> torch.Tensor:
        """(B, Q, 2) normalised points -> (B, K, Q) float32 scores."""

    def query_grid(self, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        """(W,) and (H,) normalised coordinates -> (B, K, H, W) float32 scores at every (x, y) pair."""
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        points = torch.stack([grid_x, grid_y], dim=-1).view(1, -1, 2)
        return self.query(points).view(self.batch_size, -1, len(ys), len(xs))


class LearnedField(KeypointField):
    """The head's output: (B, C, n_h, n_w) cell features and the MLP that reads them.

    ``query_neighbours`` is the training query (no blend); ``query`` the test-time one (blended, float32,
    chunked over Q so a dense map of any resolution fits in memory).
    """

    def __init__(self, features: torch.Tensor, mlp: QueryMLP, local_ensemble: bool):
        self.features = features
        self.mlp = mlp
        self.local_ensemble = local_ensemble
        self.batch_size = features.shape[0]
        self.device = features.device

    def _neighbours(self, rows: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N, K, Q) predictions of the N = 4 nearest cells (1 without local ensemble), and (B, N, Q, 2) r.

        rows: (B, n_h * n_w, hidden[0]) projected cell features; points: (B, Q, 2) normalised.
        """
        n_h, n_w = self.features.shape[-2:]
        n_max = max(n_h, n_w)
        counts = torch.tensor([n_w, n_h], device=points.device, dtype=points.dtype)  # (x, y) order
        grid = points * (n_max / counts)  # grid-sample frame: each axis of the cell grid spans [-1, 1]
        if self.local_ensemble:
            # half a cell is 1 / n in grid units; LIIF's order (vx outer, vy inner) makes 0<->3, 1<->2 diagonal
            signs = torch.tensor([[-1, -1], [-1, 1], [1, -1], [1, 1]], device=points.device, dtype=points.dtype)
            shifts = signs / counts
        else:
            shifts = torch.zeros(1, 2, device=points.device, dtype=points.dtype)
        shifted = (grid.unsqueeze(1) + shifts[:, None, :]).clamp(-_GRID_CLAMP, _GRID_CLAMP)  # (B, N, Q, 2)
        cell = torch.floor((shifted + 1) * counts / 2)  # (B, N, Q, 2) cell index (x, y), float
        centre = ((cell + 0.5) * 2 - counts) / n_max  # c_j = (j - (n - 1) / 2) * 2 / n_max, normalised
        r = (points.unsqueeze(1) - centre) * n_max  # half-cell units
        flat = (cell[..., 1] * n_w + cell[..., 0]).long()  # (B, N, Q)
        batch = torch.arange(points.shape[0], device=points.device).view(-1, 1, 1)
        scores = self.mlp(rows[batch, flat], r)  # (B, N, Q, K)
        return scores.permute(0, 1, 3, 2), r

    def query_neighbours(self, points: torch.Tensor) -> torch.Tensor:
        """(B, Q, 2) normalised points -> (B, N, K, Q) un-blended predictions, N = 4 (1 without ensemble)."""
        points = points.expand(self.batch_size, -1, -1)
        return self._neighbours(self.mlp.project_cells(self.features), points)[0]

    def _blend(self, rows: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        scores, r = self._neighbours(rows, points)
        if not self.local_ensemble:
            return scores[:, 0]
        area = (r[..., 0] * r[..., 1]).abs() + _AREA_EPS  # (B, 4, Q)
        weight = area.flip(1) / area.sum(1, keepdim=True)  # each cell weighted by its diagonal opposite's area
        return (scores * weight.unsqueeze(2)).sum(1)

    def query(self, points: torch.Tensor) -> torch.Tensor:
        points = points.float().expand(self.batch_size, -1, -1)
        with torch.autocast(self.device.type, enabled=False):
            rows = self.mlp.project_cells(self.features.float())  # (B, n_h * n_w, hidden[0])
            elements = self.batch_size * (4 if self.local_ensemble else 1) * rows.shape[-1]
            return _query_in_chunks(lambda part: self._blend(rows, part), points, elements)


class TargetField(KeypointField):
    """The continuous training target as a field: what a perfect head would emit (``ideal_outputs``)."""

    def __init__(self, keypoints: torch.Tensor, weight: torch.Tensor, target: Target, width: float):
        self.keypoints = keypoints  # (B, K, 2) normalised
        self.weight = weight  # (B, K)
        self.target = target
        self.width = width  # sigma or b, normalised units
        self.batch_size = keypoints.shape[0]
        self.device = keypoints.device

    def values(self, points: torch.Tensor) -> torch.Tensor:
        """(B, Q, 2) normalised points -> (B, K, Q) weighted target values, in the keypoints' dtype."""
        points = points.to(self.keypoints.dtype)
        distance_sq = (points[:, None, :, 0] - self.keypoints[..., 0:1]).square_()  # (B, K, Q)
        distance_sq += (points[:, None, :, 1] - self.keypoints[..., 1:2]).square_()
        return self._weighted_target(distance_sq)

    def _weighted_target(self, distance_sq: torch.Tensor) -> torch.Tensor:
        """(B, K, ...) squared distances, overwritten in place (these tensors are the largest in encoding) with
        the target times each keypoint's weight."""
        if self.target == "gaussian":
            value = ops.gaussian(distance_sq, self.width, in_place=True)
        else:
            value = distance_sq.sqrt_().div_(-self.width).exp_()
        return value.mul_(self.weight.view(*self.weight.shape, *(1,) * (value.dim() - 2)))

    def query_grid(self, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        dx_sq = (xs.to(self.keypoints.dtype) - self.keypoints[..., 0:1]).square_()  # (B, K, W)
        dy_sq = (ys.to(self.keypoints.dtype) - self.keypoints[..., 1:2]).square_()  # (B, K, H)
        if self.target == "laplace":
            return self._weighted_target(dy_sq.unsqueeze(-1) + dx_sq.unsqueeze(-2)).float()
        # the Gaussian is separable: two weighted profiles, one write of the (B, K, H, W) map
        return (self._weighted_target(dy_sq).unsqueeze(-1) * ops.gaussian(dx_sq, self.width, in_place=True)
                .unsqueeze(-2)).float()

    def query(self, points: torch.Tensor) -> torch.Tensor:
        points = points.expand(self.batch_size, -1, -1)
        return _query_in_chunks(lambda part: self.values(part).float(), points, points.shape[0] * self.weight.shape[1])

    def query_neighbours(self, points: torch.Tensor) -> torch.Tensor:
        """The target at every query as a single un-blended prediction, (B, 1, K, Q): zero loss on its targets."""
        return self.query(points).unsqueeze(1)


class FlippedField(KeypointField):
    """A field of a horizontally flipped input, seen in the unflipped frame: x_n -> -x_n, pairs swapped."""

    def __init__(self, field: KeypointField, permutation: torch.Tensor):
        self.field = field
        self.permutation = permutation  # (K,)
        self.batch_size = field.batch_size
        self.device = field.device

    def query(self, points: torch.Tensor) -> torch.Tensor:
        mirror = torch.tensor([-1.0, 1.0], device=points.device, dtype=points.dtype)
        return self.field.query(points * mirror)[:, self.permutation]

    def query_grid(self, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        return self.field.query_grid(-xs, ys)[:, self.permutation]


class MeanField(KeypointField):
    """The flip-test average of two fields."""

    def __init__(self, first: KeypointField, second: KeypointField):
        self.first, self.second = first, second
        self.batch_size = first.batch_size
        self.device = first.device

    def query(self, points: torch.Tensor) -> torch.Tensor:
        return (self.first.query(points) + self.second.query(points)) / 2

    def query_grid(self, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        return (self.first.query_grid(xs, ys) + self.second.query_grid(xs, ys)) / 2


class NerPEHead(nn.Module):
    """Shared backbone features (B, in_channels, h, w) -> a ``LearnedField`` on the (n_h, n_w) cell grid."""

    def __init__(self, neck: nn.Sequential, mlp: QueryMLP, grid: tuple[int, int], local_ensemble: bool):
        super().__init__()
        self.neck = neck
        self.mlp = mlp
        self.grid = grid
        self.local_ensemble = local_ensemble

    def forward(self, features: torch.Tensor) -> LearnedField:
        cells = self.neck(features)
        if cells.shape[-2:] != self.grid:
            raise ValueError(f"NerPE head: features {tuple(features.shape)} gave a {tuple(cells.shape[-2:])} grid; "
                             f"expected {self.grid} (build_head's in_stride does not match the backbone)")
        return LearnedField(cells, self.mlp, self.local_ensemble)


class NerPETargets(NamedTuple):
    queries: torch.Tensor  # (B, Q, 2) training query points, normalised units
    values: torch.Tensor   # (B, K, Q) continuous target at the queries (0 for unlabelled keypoints)
    weights: torch.Tensor  # (B, K) 1 where the keypoint is regressed, 0 where it is masked


# --- the representation ---------------------------------------------------------------------------------


class NerPE(Representation):
    """NerPE (see the module docstring). Outputs are ``KeypointField``s; targets are ``NerPETargets``.

    floor_tolerance_px: the ideal field is the continuous target itself, whose argmax on the query grid is
    the grid point nearest to the keypoint on each axis (the target decreases with distance, and the grid is
    a product of per-axis grids), so the error is at most half a query step s = W / (n_w * U) per axis. With
    the defaults (8 cells, U = 32) s <= 1 px for inputs up to 256 px on the long side, so the error is at
    most sqrt(2) / 2 px (0.71 with rounding headroom). Progressive decoding finds the same grid point,
    because the coarse argmax of a unimodal map is the coarse cell containing the keypoint and each window
    covers its two finer halves.
    """

    config_class: ClassVar[type] = NerPEConfig

    @classmethod
    def default_config(cls, input_size: tuple[int, int]) -> NerPEConfig:
        """The release's defaults from 128 px up. Below (ours; the release has no such config), the 128x128
        config kept in input pixels: sigma and b scaled by 128 / long side, so that the target stays 3.84 px
        wide, the narrowest of any released config and the heatmap's 4 px at 64x64; and S = 8 * cell size /
        16 px, one training query per 4 px^2 as there (S = 4 at 64x64). Every released config has about 11.6
        training queries inside the 1-sigma disk, and so do these. The paper's sigma = 0.06 with S = 8 would
        keep that count too, but with a target half as wide in pixels as any released one, which heatbench's
        schedule fits far less well (``docs/training.md``), and at four times the MLP's training cost. S = 8
        at the scaled sigma also costs about three times S = 4's training time for the same error at 64x64
        (``docs/training.md``), so S = 4 is the default.
        """
        config = NerPEConfig()
        long_side = max(input_size)
        width_scale = max(1.0, _DENSEST_RELEASED_LONG_SIDE / long_side)
        cell_px = long_side / config.cells
        return dataclasses.replace(config, sigma=config.sigma * width_scale,
                                   laplace_b=config.laplace_b * width_scale,
                                   samples_per_axis=max(1, min(8, round(8 * cell_px / 16))))

    floor_tolerance_px: ClassVar[float] = 0.71
    floor_variants: ClassVar[tuple[str, ...]] = ("target", "decoding")

    def __init__(self, config: NerPEConfig, input_size: tuple[int, int], num_keypoints: int):
        super().__init__(config, input_size, num_keypoints)
        height, width = self.input_size
        long_side, short_side = max(height, width), min(height, width)
        short_cells = config.cells * short_side / long_side
        if short_cells != int(short_cells):
            raise ValueError(f"NerPE: cells={config.cells} on the long side of a {height}x{width} input gives "
                             f"{short_cells:g} cells on the short side; choose cells so that it is an integer")
        self.grid = (config.cells, int(short_cells)) if height >= width else (int(short_cells), config.cells)
        self._half_long = long_side / 2

    @property
    def train_cost_note(self) -> str:
        queries = math.prod(self.grid) * self.config.samples_per_axis**2
        ensemble = f" x 4 local-ensemble cells = {4 * queries} evaluations" if self.config.local_ensemble else ""
        return (f"its loss runs the query MLP (hidden {'-'.join(map(str, self.config.hidden))}) at {queries} "
                f"training queries per image{ensemble}, where the heatmap's head is one 1x1 conv")

    # coordinates: canonical input px <-> normalised

    def _normalise(self, xy: torch.Tensor) -> torch.Tensor:
        height, width = self.input_size
        centre = torch.tensor([width / 2, height / 2], device=xy.device, dtype=xy.dtype)
        return (xy - centre) / self._half_long

    def _grid_axes(self, height: int, width: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised centres of a height x width grid over the input: (width,) x and (height,) y."""
        in_height, in_width = self.input_size
        xs = ops.cell_centres(width, device=device) * (in_width / width)
        ys = ops.cell_centres(height, device=device) * (in_height / height)
        return (xs - in_width / 2) / self._half_long, (ys - in_height / 2) / self._half_long

    def output_size(self) -> tuple[int, int]:
        n_h, n_w = self.grid
        return n_h * self.config.queries_per_cell, n_w * self.config.queries_per_cell

    def build_head(self, in_channels: int, in_stride: int) -> NerPEHead:
        height, width = self.input_size
        config = self.config
        neck = build_neck(in_channels, config.channels, (height // in_stride, width // in_stride), self.grid)
        mlp = QueryMLP(config.channels, config.hidden, self.num_keypoints, config.pe_frequencies)
        return NerPEHead(neck, mlp, self.grid, config.local_ensemble)

    def _target_field(self, keypoints: torch.Tensor, visible: torch.Tensor) -> TargetField:
        keypoints, weight = ops.sanitize_keypoints(keypoints, visible)
        width = self.config.sigma if self.config.target == "gaussian" else self.config.laplace_b
        return TargetField(self._normalise(keypoints), weight, self.config.target, width)

    def _training_queries(self, batch: int, device, dtype) -> torch.Tensor:
        """(B, S^2 * n_h * n_w, 2) normalised points, redrawn on every call from torch's global RNG."""
        (n_h, n_w), s = self.grid, self.config.samples_per_axis
        n_max = max(n_h, n_w)
        # uniform: one point in each of the S x S sub-cells of a cell; random: S^2 points anywhere in the cell
        divisions, repeats = (s, 1) if self.config.sampling == "uniform" else (1, s * s)
        rows = torch.arange(n_h * divisions, device=device, dtype=dtype)
        cols = torch.arange(n_w * divisions, device=device, dtype=dtype)
        corner_y, corner_x = torch.meshgrid(rows, cols, indexing="ij")
        corners = torch.stack([corner_x, corner_y], dim=-1).view(1, -1, 1, 2)  # (1, units, 1, 2), unit coords
        jitter = torch.rand(batch, corners.shape[1], repeats, 2, device=device, dtype=dtype)
        unit_size = 2 / (n_max * divisions)  # normalised side of one sub-cell (or cell)
        origin = torch.tensor([n_w, n_h], device=device, dtype=dtype) / n_max  # the grid spans +-n / n_max
        return ((corners + jitter) * unit_size - origin).view(batch, -1, 2)

    def encode(self, keypoints: torch.Tensor, visible: torch.Tensor) -> NerPETargets:
        target = self._target_field(keypoints, visible)
        queries = self._training_queries(keypoints.shape[0], keypoints.device, keypoints.dtype)
        values = target.values(queries)  # (B, K, Q), already 0 for unlabelled keypoints
        weights = torch.ones_like(target.weight) if self.config.unlabelled_to_zero else target.weight
        return NerPETargets(queries, values, weights)

    def loss(self, outputs: LearnedField | TargetField, targets: NerPETargets) -> torch.Tensor:
        """1/2 * mean over (B, N, K, Q) of (w * y_n - w * g)^2 for each of the N un-blended neighbours."""
        predictions = outputs.query_neighbours(targets.queries).float()  # (B, N, K, Q)
        weight = targets.weights.float()[:, None, :, None]
        return 0.5 * (weight * (predictions - targets.values.float().unsqueeze(1))).square().mean()

    @torch.no_grad()
    def dense_heatmap(self, outputs: KeypointField, height: int, width: int) -> torch.Tensor:
        """(B, K, height, width) float32 scores at the centres of a height x width grid over the input."""
        return outputs.query_grid(*self._grid_axes(height, width, outputs.device))

    def _to_canonical(self, col: torch.Tensor, row: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """(...) integer indices on a height x width grid -> (..., 2) float canonical centres (i + 1/2) * s."""
        in_height, in_width = self.input_size
        return torch.stack([(col + 0.5) * (in_width / width), (row + 0.5) * (in_height / height)], dim=-1)

    def _level_sizes(self, queries_per_cell: int) -> tuple[int, int]:
        n_h, n_w = self.grid
        return n_h * queries_per_cell, n_w * queries_per_cell

    def _refinements(self, config: NerPEConfig) -> list[tuple[int, int, int, int]]:
        """(height, width, k_h, k_w) of each progressive level after level 0: U doubles up to queries_per_cell."""
        levels, queries_per_cell, window = [], config.progressive_start, config.progressive_window
        while queries_per_cell < config.queries_per_cell:
            queries_per_cell *= 2
            height, width = self._level_sizes(queries_per_cell)
            levels.append((height, width, min(window, height), min(window, width)))
        return levels

    def _argmax(self, outputs: KeypointField, height: int, width: int):
        """Peak (B, K) score, column and row of the height x width dense map."""
        score, index = max_last(self.dense_heatmap(outputs, height, width).flatten(2))
        return score, index % width, torch.div(index, width, rounding_mode="floor")

    def _progressive(self, outputs: KeypointField) -> tuple[torch.Tensor, torch.Tensor]:
        height, width = self._level_sizes(self.config.progressive_start)
        score, col, row = self._argmax(outputs, height, width)
        batch, keypoints = score.shape
        for height, width, k_h, k_w in self._refinements(self.config):
            # the previous argmax splits into finer queries 2i and 2i + 1; the window holds both
            left = (2 * col - (k_w - 2) // 2).clamp(0, width - k_w)  # (B, K)
            top = (2 * row - (k_h - 2) // 2).clamp(0, height - k_h)
            offset_y, offset_x = torch.meshgrid(torch.arange(k_h, device=col.device),
                                                torch.arange(k_w, device=col.device), indexing="ij")
            cols = left[..., None] + offset_x.reshape(-1)  # (B, K, k_h * k_w)
            rows = top[..., None] + offset_y.reshape(-1)
            points = self._normalise(self._to_canonical(cols, rows, height, width))  # (B, K, k_h * k_w, 2)
            # every query point yields all K scores; keep keypoint j's score at keypoint j's own window
            scores = outputs.query(points.view(batch, -1, 2)).view(batch, keypoints, keypoints, -1)
            score, best = scores.diagonal(dim1=1, dim2=2).max(dim=1)  # (B, K)
            col = torch.gather(cols, -1, best.unsqueeze(-1)).squeeze(-1)
            row = torch.gather(rows, -1, best.unsqueeze(-1)).squeeze(-1)
        return self._to_canonical(col, row, height, width), score

    @torch.no_grad()
    def decode(self, outputs: KeypointField) -> tuple[torch.Tensor, torch.Tensor]:
        """Argmax of the field on the U-per-cell query grid: (B, K, 2) canonical px and (B, K) peak scores."""
        if self.config.decoding == "progressive":
            return self._progressive(outputs)
        height, width = self.output_size()
        score, col, row = self._argmax(outputs, height, width)
        return self._to_canonical(col, row, height, width), score

    def decode_cost(self, decoding: Decoding | None = None) -> dict[str, int]:
        """MLP work of decoding one image, standard or progressive (default: the configured decoding).

        query_points: points at which the field is evaluated; each evaluation yields all K scores, and in
        progressive decoding each keypoint has its own window, so a refinement level costs K * k^2 points.
        mlp_evaluations: query_points x 4 neighbours with the local ensemble (x 1 without).
        mlp_macs: mlp_evaluations x the multiply-accumulates of one evaluation of the paper's MLP, 1x1 convs
        on [cell feature, PE(r)] (our implementation does the cell-feature part once per cell, so it does
        fewer). levels: 1 for standard decoding. The flip test doubles every count.
        """
        config = dataclasses.replace(self.config, decoding=decoding or self.config.decoding)  # validates it
        if config.decoding == "standard":
            height, width = self.output_size()
            points, levels = height * width, 1
        else:
            height, width = self._level_sizes(config.progressive_start)
            refinements = self._refinements(config)
            points = height * width + sum(self.num_keypoints * k_h * k_w for _, _, k_h, k_w in refinements)
            levels = 1 + len(refinements)
        evaluations = points * (4 if config.local_ensemble else 1)
        return {"query_points": points, "mlp_evaluations": evaluations,
                "mlp_macs": evaluations * mlp_macs_per_query(config, self.num_keypoints), "levels": levels}

    def decoding_variants(self) -> dict[str, NerPE]:
        """The other decoding (progressive for standard, and back), to measure NerPE-p on a trained model; none
        where ``queries_per_cell`` is no power-of-two multiple of ``progressive_start``, which progressive needs."""
        other = "progressive" if self.config.decoding == "standard" else "standard"
        try:
            config = dataclasses.replace(self.config, decoding=other)
        except ValueError:
            return {}
        return {other: type(self)(config, self.input_size, self.num_keypoints)}

    def flip_back(self, outputs: KeypointField, flip_pairs: FlipPairs) -> FlippedField:
        """Query the flipped input's field at mirrored points (x_n -> -x_n, exact since the normalised frame
        is centred) and swap left/right channels."""
        return FlippedField(outputs, ops.flip_permutation(self.num_keypoints, flip_pairs, device=outputs.device))

    def merge_flipped(self, outputs: KeypointField, flipped_back: KeypointField) -> MeanField:
        return MeanField(outputs, flipped_back)

    def ideal_outputs(self, keypoints: torch.Tensor, visible: torch.Tensor) -> TargetField:
        """The continuous target (Gaussian or Laplace, weighted by visibility) as an analytic field."""
        return self._target_field(keypoints, visible)
