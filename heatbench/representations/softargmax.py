"""Soft-argmax (integral) regression: IPR, DSNT and the debiased soft-argmax, one module, three ``variant``s.

Method. The head emits one logit map z (B, K, h, w) per keypoint at stride s, from a 1x1 conv initialised
N(0, 0.001) with bias 0: mmpose's ``IntegralRegressionHead`` builds its deconvolutions and final conv as a
nested ``HeatmapHead``, whose ``default_init_cfg`` this is (``mmpose/models/heads/regression_heads/
integral_regression_head.py``). A softmax of sharpness β turns
it into a distribution over the cells, p = softmax(β z) over all h·w of them, and the keypoint is the
expectation mu = sum p·X over the cell centres X: a differentiable argmax, supervised on coordinates alone.
- ``ipr``: Sun et al., "Integral Human Pose Regression", ECCV 2018, https://arxiv.org/abs/1711.08229, as
  mmpose's ``IntegralRegressionHead`` runs it: β = 1, SmoothL1 (threshold 1) between mu and the keypoint,
  both normalised to [0, 1] by the map size (the paper's L1; on [0, 1] coordinates SmoothL1 is the
  quadratic ½ d², mmpose's choice, which we follow).
- ``dsnt``: Nibali et al., "Numerical Coordinate Regression with Convolutional Neural Networks", 2018,
  https://arxiv.org/abs/1801.07372: β = 1, the Euclidean loss ||mu - y||_2 in DSNT's [-1, 1] frame (each
  axis scaled by 2 / its cell count) plus λ·JS(p || q), q the Gaussian N(y, σ_t²) sampled on the cell
  centres and normalised over the map; λ = 1, σ_t = 1 cell [paper?: both recalled, not checked against the
  paper; mmpose's DSNT config instead uses SmoothL1 plus JS with σ = 2 cells on 64x64 maps].
- ``debias``: Gu, Yang, Yao, "Removing the Bias of Integral Pose Regression", ICCV 2021: β = 10, the
  background correction below, then the IPR loss on the corrected mu (ours: mmpose's debias config runs its
  DSNT head, SmoothL1 plus the JS term; we keep the correction apart from the loss, so that ipr against
  debias measures the correction alone).

Background correction (our derivation, for the β-scaled softmax). Let C = sum exp(β z) be the softmax's
normaliser and suppose the background logits are 0. Every cell then carries exp(β·0) = 1 -- whatever β is --
under a foreground f_i = exp(β z_i) - 1 (ours: the background is counted in every cell, the peak's too, which
makes the correction exact for a foreground of any shape). The soft-argmax mixes the two,
mu = (sum f_i X_i + B·X̄) / C with B = h·w cells and X̄ the map centre, so the foreground's expectation is
    mu_f = (C·mu - B·X̄) / (C - B) = X̄ + (mu - X̄) / a,   a = 1 - B / C, the foreground's share of the mass,
with C computed from the same β·z as the softmax (a = -expm1(log B - logsumexp(β z)), stable for any logit
scale). mmpose computes C from z without β and subtracts a background of total mass 1 instead of B:
its C / (C - 1)·(mu - 1 / (2C)) in [0, 1] units is the formula above with B = 1 and X̄ = 1/2, which with
β = 10 and C summed over thousands of cells corrects practically nothing. Where a <= 0.05 the map has (almost)
no mass above its background and mu_f is undefined; a is clamped there (ours), which keeps mu_f within ten
map widths of the centre and its gradient finite.

Coordinates: cell (i, j) is centred at canonical ((i + ½)·s, (j + ½)·s), i.e. (i + ½) / w in normalised
units, the pixel-centre-correct grid (ours). mmpose's linspace i / w is the MSRA
u = x / s: it reads cell i as pixel-centre coordinate i·s, canonical i·s + ½, (s - 1) / 2 px up and left of
the cell's centre, a shift the network has to learn and its flip test has to undo (``shift_coords``).
A soft-argmax cannot leave the hull of the cell centres, [s/2, W - s/2] x [s/2, H - s/2], so keypoints in the
outer half cell are out of its reach. Targets: the keypoint in canonical px; weight 0 for unlabelled,
non-finite and outside-the-input keypoints ([0, W] x [0, H]; mmpose: outside [0, w - 1] in pixel-centre
units). Losses are means over the B·K keypoints (and the 2 axes for SmoothL1), weight-0 terms counting as
zeros, as mmpose's ``use_target_weight``.

Decoding: mu (debiased for ``debias``) times s, in canonical px. Score (ours; the method defines none and
mmpose returns 1): the mass of p in the 3 x 3 cells around its argmax (fewer at the map edge), 1 for a compact
peak and at most 9 / (h·w) for a flat map; for ``debias`` p includes the background, so the ideal map, half of
whose mass is background, scores about 0.35 to 0.4.

Flip test: the columns reversed and the pairs swapped; cell i and cell w - 1 - i are mirror images
((i + ½)·s -> W - (i + ½)·s), so the flip is exact; the merge averages logits (the base class's rule).

Ideal outputs (ours): what a perfect network emits. For ``dsnt`` it is the regulariser's target, the sampled
Gaussian of std σ_t -- but with its centre c moved so that its expectation on the finite grid is exactly k
(near the border a Gaussian centred on k is cut and its mean drifts inwards; DSNT's Euclidean term has a
kink at zero error, so its minimiser keeps the mean on k and pays the small JS cost of the shift). ``ipr`` and
``debias`` see only the mean, so any map with mean k is perfect: we emit the same blob, so that the three
variants' floors are measured on one shape; for ``debias`` it is the foreground on a zero-logit background, of
total mass equal to the background's (a = ½), so that the plain soft-argmax of the ideal map is visibly
biased and only the correction recovers k. Logits are the blob's log-probabilities divided by β
(``debias``: log(1 + B·blob) / β). The mean grows monotonically with c (the blob is an exponential family in
c / σ²), so c is found by bisection; for k inside the hull the match is exact to float precision.

Defaults: ``variant="ipr"``, β from the variant (``beta=None``: 1 for ipr and dsnt, mmpose's ``beta``; 10 for
debias, mmpose's debias config), λ = 1, σ_t = 1 cell, stride 4, at every input size (the papers have no
per-resolution table; mmpose's 256x256 configs use 64x64 maps, our stride 4).
"""
from __future__ import annotations

import dataclasses
import math
from typing import ClassVar, Literal, NamedTuple, get_args

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..decoders.argmax import argmax_window
from ..representation import (FlipPairs, Representation, check_choice, check_integer, check_number,
                              keypoint_map_head, map_size)

Variant = Literal["ipr", "dsnt", "debias"]
_VARIANTS = get_args(Variant)
_VARIANT_BETA = {"ipr": 1.0, "dsnt": 1.0, "debias": 10.0}
_MIN_FOREGROUND = 0.05  # the clamp on the debias foreground share a; see the module docstring
_BISECTION_STEPS = 40   # shrinks the bracket (at most a few hundred cells) below float32 resolution



@dataclasses.dataclass(frozen=True)
class SoftArgmaxConfig:
    variant: Variant = "ipr"
    beta: float | None = None  # softmax sharpness; None: the variant's published value (ipr, dsnt 1; debias 10)
    js_weight: float = 1.0     # DSNT's λ on the Jensen-Shannon regulariser [paper?]
    js_sigma: float = 1.0      # DSNT's σ_t in cells [paper?]; also the width of every variant's ideal output
    stride: int = 4            # input px per map cell; must equal the feature stride

    def __post_init__(self):
        check_choice("variant", self.variant, _VARIANTS)
        if self.beta is not None:  # None: the variant's value
            check_number("beta", self.beta, above=0)
        check_number("js_weight", self.js_weight, at_least=0)
        check_number("js_sigma", self.js_sigma, above=0, unit=" cells")
        check_integer("stride", self.stride)

    @property
    def softmax_beta(self) -> float:
        """β in use: ``beta``, or the variant's published value where ``beta`` is None."""
        return _VARIANT_BETA[self.variant] if self.beta is None else float(self.beta)


class SoftArgmaxTargets(NamedTuple):
    keypoints: torch.Tensor  # (B, K, 2) canonical px, zero where the weight is 0
    weight: torch.Tensor     # (B, K) 1 for a labelled keypoint inside the input, else 0


def _log_gaussian_profile(centre: torch.Tensor, count: int, sigma: float) -> torch.Tensor:
    """centre (...) in cells -> (..., count) log-probabilities of a Gaussian of std ``sigma`` cells sampled
    at the cell centres i + 0.5 and normalised over the ``count`` cells."""
    centres = ops.cell_centres(count, centre.device, centre.dtype)
    return torch.log_softmax(-((centres - centre.unsqueeze(-1)) ** 2) / (2 * sigma**2), dim=-1)


def _mean_matched_log_profile(mean: torch.Tensor, count: int, sigma: float) -> torch.Tensor:
    """mean (...) in cells -> (..., count) log-probabilities of the sampled Gaussian of std ``sigma`` whose
    expectation over the ``count`` cell centres is ``mean``: to float precision inside the hull of the centres,
    [0.5, count - 0.5]; beyond it the blob piles onto the edge cell. The centre is found by bisection."""
    centres = ops.cell_centres(count, mean.device, mean.dtype)
    # With the centre 16 σ² cells past an edge, the edge cell outweighs its neighbour by e^16: the mean is on it.
    reach = 16 * sigma**2
    low, high = torch.full_like(mean, -reach), torch.full_like(mean, count + reach)
    for _ in range(_BISECTION_STEPS):
        middle = (low + high) / 2
        above = (_log_gaussian_profile(middle, count, sigma).exp() * centres).sum(dim=-1) > mean
        low, high = torch.where(above, low, middle), torch.where(above, middle, high)
    return _log_gaussian_profile((low + high) / 2, count, sigma)


def _js_divergence(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """(B, K, h, w) log-probabilities -> (B, K) Jensen-Shannon divergence in nats, computed in log space."""
    log_m = torch.logaddexp(log_p, log_q) - math.log(2)
    kl_p = (log_p.exp() * (log_p - log_m)).sum(dim=(-2, -1))
    kl_q = (log_q.exp() * (log_q - log_m)).sum(dim=(-2, -1))
    return (kl_p + kl_q) / 2


class SoftArgmax(Representation):
    """Integral regression over a softmax-normalised logit map; see the module docstring."""

    config_class: ClassVar[type] = SoftArgmaxConfig
    floor_variants: ClassVar[tuple[str, ...]] = ("variant",)
    # decode(ideal_outputs(k)) is exact in exact arithmetic for every k in the hull of the cell centres, which
    # holds the interior; what is left is float32 rounding of sums over up to 64 x 48 cells: measured at most
    # 9e-5 px for ipr and dsnt and 4e-4 px for debias (whose 1 / a = 2 doubles it) at 64x64, 128x128 and
    # 256x192, stated with a margin.
    floor_tolerance_px: ClassVar[float] = 1e-3

    def __init__(self, config: SoftArgmaxConfig, input_size: tuple[int, int], num_keypoints: int):
        super().__init__(config, input_size, num_keypoints)
        self.map_size = map_size(self.input_size, config.stride)

    def resolved_config(self) -> dict:
        return {**super().resolved_config(), "beta": self.config.softmax_beta}

    def output_size(self) -> tuple[int, int]:
        return self.map_size

    def build_head(self, in_channels: int, in_stride: int) -> nn.Module:
        return keypoint_map_head(self.name, in_channels, in_stride, self.config.stride, self.num_keypoints)

    def _map_size_xy(self, like: torch.Tensor) -> torch.Tensor:
        """(2,) (w, h) cell counts on ``like``'s device and dtype."""
        height, width = self.map_size
        return torch.tensor([width, height], device=like.device, dtype=like.dtype)

    def _locate(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits (B, K, h, w) -> soft-argmax (B, K, 2) in cells (debiased for ``debias``) and
        :func:`ops.softmax_weights` of β z: w (B, K, h, w), its sum (B, K) and log C (B, K).

        The soft-argmax, linear in p = w / sum, is taken on w and divided by the sum.
        """
        weights, total, log_normaliser = ops.softmax_weights(logits, self.config.softmax_beta)
        mu = ops.soft_argmax(weights) / total.unsqueeze(-1)
        if self.config.variant == "debias":
            height, width = self.map_size
            foreground = -torch.expm1(math.log(height * width) - log_normaliser)  # a = 1 - B / C
            centre = self._map_size_xy(mu) / 2
            mu = centre + (mu - centre) / foreground.clamp_min(_MIN_FOREGROUND).unsqueeze(-1)
        return mu, weights, total, log_normaliser

    def encode(self, keypoints: torch.Tensor, visible: torch.Tensor) -> SoftArgmaxTargets:
        """(B, K, 2) canonical keypoints, (B, K) visibility -> the keypoints and (B, K) weights."""
        keypoints, weight = ops.sanitize_keypoints(keypoints, visible)
        inside = ops.inside_input(keypoints, self.input_size)
        return SoftArgmaxTargets(keypoints, weight * inside.to(weight.dtype))

    def loss(self, outputs: torch.Tensor, targets: SoftArgmaxTargets) -> torch.Tensor:
        mu, _, _, log_normaliser = self._locate(outputs)
        target = targets.keypoints / self.config.stride  # (B, K, 2) cells
        size = self._map_size_xy(mu)
        batch, joints = targets.weight.shape
        if self.config.variant == "dsnt":
            height, width = self.map_size
            distance = torch.linalg.vector_norm((mu - target) * (2 / size), dim=-1)  # DSNT's [-1, 1] frame
            log_q = (_log_gaussian_profile(target[..., 1], height, self.config.js_sigma).unsqueeze(-1)
                     + _log_gaussian_profile(target[..., 0], width, self.config.js_sigma).unsqueeze(-2))
            log_p = self.config.softmax_beta * outputs - log_normaliser[..., None, None]
            per_joint = distance + self.config.js_weight * _js_divergence(log_p, log_q)
            return (per_joint * targets.weight).sum() / (batch * joints)
        smooth_l1 = F.smooth_l1_loss(mu / size, target / size, reduction="none").sum(dim=-1)  # [0, 1] frame
        return (smooth_l1 * targets.weight).sum() / (batch * joints * 2)

    def decode(self, outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, K, h, w) -> (B, K, 2) canonical keypoints and (B, K) 3 x 3 peak masses."""
        mu, weights, total, _ = self._locate(outputs)
        _, window = argmax_window(weights, radius=1)
        return mu * self.config.stride, window.sum(dim=(-2, -1)) / total

    def flip_back(self, outputs: torch.Tensor, flip_pairs: FlipPairs) -> torch.Tensor:
        perm = ops.flip_permutation(self.num_keypoints, flip_pairs, device=outputs.device)
        return outputs.flip(-1)[:, perm]

    def ideal_outputs(self, keypoints: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """(B, K, h, w) logits of the mean-matched blob of the module docstring, for (B, K, 2) keypoints."""
        keypoints, _ = ops.sanitize_keypoints(keypoints, visible)
        target = keypoints / self.config.stride
        height, width = self.map_size
        sigma = self.config.js_sigma
        log_blob = (_mean_matched_log_profile(target[..., 1], height, sigma).unsqueeze(-1)
                    + _mean_matched_log_profile(target[..., 0], width, sigma).unsqueeze(-2))  # (B, K, h, w)
        if self.config.variant == "debias":
            # exp(β z) = 1 + B·blob: a zero-logit background and a foreground of the background's total mass.
            return F.softplus(log_blob + math.log(height * width)) / self.config.softmax_beta
        return log_blob / self.config.softmax_beta
