"""Heatmap distribution matching (HDM): the normalised heatmap moved onto the dot annotation by the
Earth Mover's Distance, with no Gaussian target and no pixel-wise loss.

Method. The head emits one map z (B, K, h, w) per keypoint at stride s, normalised over its h·w cells to a
distribution p of unit mass, p = softplus(z) / sum softplus(z), whose cells are the *suppliers*. The
annotation is a dot u of unit mass, held by *demanders*, and the loss is the cost of the optimal transport
of p onto them, with the Euclidean distance between cell centres, in cells, as the ground cost:
- ``naive``: one demander at u itself. The whole of p goes to it, so the EMD is sum_i p_i ||X_i - u||, in
  closed form. Its minimiser is all the mass on the cell nearest u: the naive loss quantises to the grid.
- ``subpixel``: four demanders at the centres of the 2 x 2 cells around u, holding its bilinear weights (their
  mean is u). The EMD between the h·w suppliers and these four is solved by a batched log-domain Sinkhorn
  (entropic regularisation ε, a fixed number of iterations), and the loss is its transport cost <P, C>;
  autograd differentiates through the iterations to p. Its minimiser is the bilinear split itself, which
  keeps the sub-cell position of u.

Paper: Qu, Xu, Cai, Foo, Liu, "Heatmap Distribution Matching for Human Pose Estimation", NeurIPS 2022. No code
is public, so this reconstruction follows the paper's stated method only: the paper casts heatmap learning as
matching the predicted heatmap (suppliers) to the dot annotation (demanders) by the EMD, drops the Gaussian
target, and contrasts naive with sub-pixel demanders. Everything else here is ours:
- the 1x1 conv head on the shared features, initialised as the heatmap head it replaces in a top-down model
  (N(0, 0.001), bias 0);
- the normalisation: a non-negative map over its sum, as the heatmap of the model HDM is dropped into, made
  non-negative by softplus (``normalisation="softplus"``) rather than ReLU, whose cells below 0 get no gradient.
  A softmax (``"softmax"``) is the other natural choice, but it grows the peak exponentially in its logit: the
  map collapses onto single cells within the first steps, and the cells that hold no mass, among them the
  right ones, get a gradient proportional to that mass, so the model stops learning (on the learnability
  test's dot task it ends at about half the mean-pose error, against a tenth for softplus or the heatmap);
- the ground cost: the plain Euclidean distance in cells, the EMD's (Wasserstein-1) own, which makes the
  naive mode the closed form above and keeps both modes on one scale; a squared cost would be W2², whose
  minimiser and gradients differ (our ε is in cells, the unit of our cost);
- the sub-pixel demanders: the bilinear split over the four neighbouring cell centres, with u clamped to the hull of the centres (a keypoint in the outer half cell is served by
  the edge cells);
- the solver: log-domain Sinkhorn, ε = 0.05 cells and 100 iterations, potentials
  started at 0 and the last update on the suppliers' side, so every unit of predicted mass pays for its
  transport (the demanders' marginals are met up to the solver's residual; ``tests/test_hdm.py`` holds the
  cost to the exact EMD of a linear program). With ε a twentieth of the grid spacing, the entropic plan of the perfect map sends
  e^-20 of a cell's mass to a neighbour one cell away: its transport cost is 0 to float precision. The
  unrolled solver keeps two (B, K, 4, h·w) tensors per iteration for the backward pass, which makes its
  training step the costliest of the map representations (``benchmarks/README.md``);
- masking: the per-keypoint EMD times the weight (0 for unlabelled, non-finite and outside-the-input
  keypoints, [0, W] x [0, H]), averaged over B·K keypoints as mmpose averages its heatmap losses.

Coordinates: cell (i, j) is centred at canonical ((i + ½)·s, (j + ½)·s) (ours); the shared
decoders return index units (cell i at i), converted by x = (i + ½)·s.

Decoding (ours): on p, by ``decoder``. ``local_mean`` (the default) is the mean of p over the 3 x 3 cells
around its argmax -- a soft-argmax restricted to a window. It is exact on the
sub-pixel loss's minimiser (the argmax is one of the four split cells, so the window holds all four) and,
unlike a global mean, ignores mass elsewhere on the map. The shared heatmap decoders (``argmax``,
``quarter_offset``, ``dark``, ``udp_dark``) can be chosen instead: the first two
quantise (up to a half and a quarter cell per axis), and DARK assumes a Gaussian-shaped peak, which HDM's
compact maps are not (on the perfect split its floor is 1.25 px on average at stride 4, UDP-DARK's 0.16 px);
both blur with ``blur_sigma`` cells (ours: 1 cell, HDM has no label Gaussian to take it from).
Score (ours): the mass of p in the same 3 x 3 window, for every decoder, not the maximum of
p: on the perfect map that is the largest bilinear weight, anywhere in [¼, 1] depending on where u falls
inside its cell; the window mass is 1 there wherever u falls, and at most 9 / (h·w) for a flat map.

Flip test: the columns reversed and the pairs swapped (cell i mirrors cell w - 1 - i exactly); the merge
averages the maps z before normalising (the base class's rule).

Ideal outputs: what a network at the minimum of the loss emits -- for ``subpixel`` the bilinear split, for
``naive`` all the mass on the cell that contains u -- as the z that normalises to it, with empty cells at the
dtype's smallest normal number so that z stays finite.

Defaults at every input size (no per-resolution table exists): ``normalisation="softplus"``,
``demanders="subpixel"``, ε = 0.05 cells,
100 iterations, ``decoder="local_mean"``, ``blur_sigma=1``, stride 4.
"""
from __future__ import annotations

import dataclasses
import math
from typing import ClassVar, Literal, NamedTuple, get_args

import torch
from torch import nn

from .. import ops
from ..decoders import get_decoder
from ..decoders.argmax import argmax_window
from ..representation import (FlipPairs, Representation, check_choice, check_integer, check_number,
                              keypoint_map_head, map_size)

Demanders = Literal["naive", "subpixel"]
Normalisation = Literal["softplus", "softmax"]
DecoderName = Literal["local_mean", "argmax", "quarter_offset", "dark", "udp_dark"]
_DEMANDERS = get_args(Demanders)
_NORMALISATIONS = get_args(Normalisation)
_DECODERS = get_args(DecoderName)
_FLOAT_SLACK_PX = 1e-3  # float32 rounding of window means over maps of up to 64 x 48 cells, with a margin
# Below this z, log softplus(z) = z to float precision (softplus(z) = e^z (1 - e^z / 2 ...)), and softplus(z)
# itself would underflow where z keeps its gradient.
_SOFTPLUS_LINEAR_BELOW = -20.0


@dataclasses.dataclass(frozen=True)
class HDMConfig:
    demanders: Demanders = "subpixel"
    epsilon: float = 0.05            # Sinkhorn's entropic regularisation, in cells (the unit of the cost)
    iterations: int = 100            # Sinkhorn rounds, each updating both potentials
    decoder: DecoderName = "local_mean"  # how p becomes a coordinate; see the module docstring
    blur_sigma: float = 1.0          # the DARK / UDP-DARK blur width in cells
    stride: int = 4                  # input px per map cell; must equal the feature stride
    normalisation: Normalisation = "softplus"  # how the head's map becomes a distribution; see the docstring

    def __post_init__(self):
        check_choice("normalisation", self.normalisation, _NORMALISATIONS)
        check_choice("demanders", self.demanders, _DEMANDERS)
        check_number("epsilon", self.epsilon, above=0, unit=" cells")
        check_integer("iterations", self.iterations)
        check_choice("decoder", self.decoder, _DECODERS)
        check_number("blur_sigma", self.blur_sigma, above=0, unit=" cells")
        check_integer("stride", self.stride)


class HDMTargets(NamedTuple):
    keypoints: torch.Tensor  # (B, K, 2) canonical px, zero where the weight is 0
    weight: torch.Tensor     # (B, K) 1 for a labelled keypoint inside the input, else 0


def sinkhorn_log_plan(log_a: torch.Tensor, log_b: torch.Tensor, cost: torch.Tensor, epsilon: float,
                      iterations: int) -> torch.Tensor:
    """Entropic optimal transport of masses a (..., N) onto masses b (..., M) under cost (..., N, M): log P.

    P = exp(f_i + g_j - C_ij / ε), the plan minimising <P, C> + ε KL(P || a ⊗ b) with rows summing to a and
    columns to b (Peyré & Cuturi, "Computational Optimal Transport", 2019, §4.4, log-domain updates). The
    potentials f, g (in units of ε) start at g = 0 and are updated ``iterations`` times each, then f once
    more, so the rows of P sum to a exactly and the columns to b up to the residual. ``a`` and ``b`` must each
    have unit total mass; all arithmetic stays in log space, so ε far below the costs neither under- nor
    overflows. Batched over the leading dimensions; autograd differentiates through the iterations.
    """
    scaled_cost = (cost / epsilon).transpose(-1, -2).contiguous()  # (..., M, N): both reductions run faster

    def update_f(g: torch.Tensor) -> torch.Tensor:
        return log_a - torch.logsumexp(g.unsqueeze(-1) - scaled_cost, dim=-2)

    g = torch.zeros_like(log_b)
    for _ in range(iterations):
        g = log_b - torch.logsumexp(update_f(g).unsqueeze(-2) - scaled_cost, dim=-1)
    return (update_f(g).unsqueeze(-2) + g.unsqueeze(-1) - scaled_cost).transpose(-1, -2)


def bilinear_split(target: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit mass at ``target`` (..., 2) (x, y) in cells (cell i centred at i + 0.5) split over its 2 x 2 cells.

    Returns cells (..., 4, 2) long (x, y) indices and weights (..., 4): bilinear weights, summing to 1, whose
    weighted mean of the cell centres is the target clamped to the hull of the centres of the (h, w) map.
    """
    height, width = size
    last = torch.tensor([width - 1, height - 1], device=target.device, dtype=target.dtype)
    position = (target - 0.5).clamp_min(0).minimum(last)  # index units, cell i at i
    corner = position.floor().minimum(last - 1)  # so that corner + 1 is still on the map
    fraction = (position - corner).unsqueeze(-2)  # (..., 1, 2)
    steps = torch.tensor([[0, 0], [1, 0], [0, 1], [1, 1]], device=target.device)  # (4, 2) (dx, dy)
    weights = torch.where(steps.bool(), fraction, 1 - fraction).prod(dim=-1)  # (..., 4)
    return corner.long().unsqueeze(-2) + steps, weights


class HDM(Representation):
    """Heatmap distribution matching with naive or sub-pixel demanders; see the module docstring."""

    config_class: ClassVar[type] = HDMConfig
    floor_variants: ClassVar[tuple[str, ...]] = ("demanders", "decoder")

    def __init__(self, config: HDMConfig, input_size: tuple[int, int], num_keypoints: int):
        super().__init__(config, input_size, num_keypoints)
        self.map_size = map_size(self.input_size, config.stride, min_cells=2)  # a 2 x 2 block to split a keypoint over

    @property
    def train_cost_note(self) -> str:
        if self.config.demanders == "naive":
            return ""
        return (f"its sub-pixel loss unrolls {self.config.iterations} log-domain Sinkhorn iterations over (B, K, 4, "
                "h*w) tensors and backpropagates through every one")

    @property
    def floor_tolerance_px(self) -> float:
        """Bound on |decode(ideal_outputs(k)) - k| for interior keypoints, input px.

        ``subpixel`` with ``local_mean``: exact in exact arithmetic (the window holds the whole split), so
        float32 rounding only. Every other pairing: half a cell per axis, s·√2 / 2. The naive ideal map is one
        cell, whose centre any decoder returns; on the sub-pixel split the argmax is the split cell nearest u
        (within half a cell per axis), the quarter offset moves it towards u by a quarter cell, and DARK's step
        on the blurred split stays inside that half cell (measured at most 0.40 cells, UDP-DARK 0.04, with
        blur_sigma 1).
        """
        if self.config.demanders == "subpixel" and self.config.decoder == "local_mean":
            return _FLOAT_SLACK_PX
        return self.config.stride * math.sqrt(2) / 2 + _FLOAT_SLACK_PX

    def output_size(self) -> tuple[int, int]:
        return self.map_size

    def build_head(self, in_channels: int, in_stride: int) -> nn.Module:
        return keypoint_map_head(self.name, in_channels, in_stride, self.config.stride, self.num_keypoints)

    def _cell_centres(self, like: torch.Tensor) -> torch.Tensor:
        """(h·w, 2) (x, y) centres of the cells in row-major order, in cells."""
        height, width = self.map_size
        y, x = torch.meshgrid(ops.cell_centres(height, like.device, like.dtype),
                              ops.cell_centres(width, like.device, like.dtype), indexing="ij")
        return torch.stack((x, y), dim=-1).flatten(0, 1)

    def encode(self, keypoints: torch.Tensor, visible: torch.Tensor) -> HDMTargets:
        """(B, K, 2) canonical keypoints, (B, K) visibility -> the keypoints and (B, K) weights."""
        keypoints, weight = ops.sanitize_keypoints(keypoints, visible)
        inside = ops.inside_input(keypoints, self.input_size)
        return HDMTargets(keypoints, weight * inside.to(weight.dtype))

    def log_probabilities(self, outputs: torch.Tensor) -> torch.Tensor:
        """(B, K, h, w) maps z -> (B, K, h·w) log p of the suppliers, by ``normalisation``."""
        z = outputs.flatten(-2)
        if self.config.normalisation == "softmax":
            return z.log_softmax(dim=-1)
        # the clamp keeps the unused branch finite, so that torch.where's gradient is not 0 * inf
        log_mass = torch.where(z < _SOFTPLUS_LINEAR_BELOW, z,
                               nn.functional.softplus(z.clamp_min(_SOFTPLUS_LINEAR_BELOW)).log())
        return log_mass - log_mass.logsumexp(dim=-1, keepdim=True)

    def loss(self, outputs: torch.Tensor, targets: HDMTargets) -> torch.Tensor:
        log_p = self.log_probabilities(outputs)  # (B, K, N) suppliers, N = h·w
        target = targets.keypoints / self.config.stride  # (B, K, 2) cells
        centres = self._cell_centres(log_p)  # (N, 2)
        if self.config.demanders == "naive":
            cost = torch.linalg.vector_norm(centres - target.unsqueeze(-2), dim=-1)  # (B, K, N)
            emd = (log_p.exp() * cost).sum(dim=-1)
        else:
            cells, mass = bilinear_split(target, self.map_size)  # (B, K, 4, 2), (B, K, 4)
            demanders = cells.to(target.dtype) + 0.5
            cost = torch.linalg.vector_norm(centres.unsqueeze(-2) - demanders.unsqueeze(-3), dim=-1)  # (B, K, N, 4)
            log_mass = mass.clamp_min(torch.finfo(mass.dtype).tiny).log()  # an empty demander stays finite
            log_plan = sinkhorn_log_plan(log_p, log_mass, cost, self.config.epsilon, self.config.iterations)
            emd = (log_plan.exp() * cost).sum(dim=(-2, -1))
        batch, joints = targets.weight.shape
        return (emd * targets.weight).sum() / (batch * joints)

    def decode(self, outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Maps z (B, K, h, w) -> (B, K, 2) canonical keypoints and (B, K) 3 x 3 peak masses of p."""
        probs = self.log_probabilities(outputs).exp().view_as(outputs)
        peak, window = argmax_window(probs, radius=1)  # (B, K, 2), (B, K, 3, 3)
        mass = window.sum(dim=(-2, -1))
        if self.config.decoder == "local_mean":
            offsets = torch.arange(-1, 2, device=probs.device, dtype=probs.dtype)
            shift = torch.stack(((window.sum(dim=-2) * offsets).sum(dim=-1),
                                 (window.sum(dim=-1) * offsets).sum(dim=-1)), dim=-1)
            index = peak.to(probs.dtype) + shift / mass.unsqueeze(-1)
        else:
            index, _ = get_decoder(self.config.decoder)(probs, self.config.blur_sigma)
        return (index + 0.5) * self.config.stride, mass

    def flip_back(self, outputs: torch.Tensor, flip_pairs: FlipPairs) -> torch.Tensor:
        perm = ops.flip_permutation(self.num_keypoints, flip_pairs, device=outputs.device)
        return outputs.flip(-1)[:, perm]

    def ideal_outputs(self, keypoints: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """(B, K, h, w) maps z whose normalisation is the loss's minimiser for (B, K, 2) keypoints."""
        keypoints, _ = ops.sanitize_keypoints(keypoints, visible)
        target = keypoints / self.config.stride
        height, width = self.map_size
        if self.config.demanders == "subpixel":
            cells, mass = bilinear_split(target, self.map_size)
        else:
            last = torch.tensor([width - 1, height - 1], device=target.device)
            cells = target.floor().long().clamp_min(0).minimum(last).unsqueeze(-2)  # (B, K, 1, 2): u's cell
            mass = torch.ones_like(target[..., :1])
        flat = cells[..., 1] * width + cells[..., 0]  # (B, K, 4) or (B, K, 1)
        probs = torch.zeros(*target.shape[:-1], height * width, device=target.device, dtype=target.dtype)
        probs = probs.scatter_add(-1, flat, mass).clamp_min(torch.finfo(probs.dtype).tiny)
        # z = log p for the softmax; the inverse softplus log(e^p - 1) otherwise (p sums to 1, so no rescaling)
        z = probs.log() if self.config.normalisation == "softmax" else probs.expm1().log()
        return z.view(*target.shape[:-1], height, width)
