"""SimCC: each keypoint coordinate as a classification over sub-pixel bins, one 1-D vector per axis.

Method: the keypoint's x and y are classified independently into N_x = W·k and N_y = H·k bins, where k, the
split ratio, is the number of bins per input pixel. The head flattens one feature map per keypoint and maps it
with two linear layers to the x and y logits; decoding is a softmax and an argmax per axis. Labels are either a
one-hot bin with uniform label smoothing ("SimDR", loss ``NMTCritierion``) or a 1-D Gaussian over the bins
("SA-SimDR", loss ``KLDiscretLoss``); both losses are KL(target || softmax(logits)) with different reductions.

Paper: Li et al., "SimCC: a Simple Coordinate Classification Perspective for Human Pose Estimation",
ECCV 2022, https://arxiv.org/abs/2107.03332; code github.com/leeyegy/SimCC ("the repo" below).

Coordinates (ours): bin i covers canonical [i/k, (i+1)/k) and is centred at (i + 0.5)/k.
The repo maps bin i to pixel-centre coordinate i/k, i.e. canonical i/k + 0.5: its bin grid sits (k - 1)/(2k) px
to the right of ours. The offset moves the quantisation grid, not its spacing, so it changes no accuracy, and
ours makes the horizontal flip an exact reversal of the x vector for any k (the repo's one-bin
``SHIFT_HEATMAP`` is exact only at k = 2, and mmpose's unshifted flip biases the flip average by
(k - 1)/(2k) px). It needs W·k and H·k to be integers, which is checked.

Encoding, with x in canonical pixels and the bin coordinate x·k:
- ``onehot``: index floor(x·k), the bin containing x, i.e. the bin whose centre is nearest (the repo's
  rounding picks the same in its grid); target 1 - ε there and ε/(N - 1) elsewhere; weight 0 when x is
  outside [0, W).
- ``gaussian``: t(i) = exp(-((i + 0.5) - x·k)^2 / 2σ^2) / (σ√(2π)), σ in bins, centred on the float bin
  coordinate as in the repo (mmpose rounds it to a bin); weight 0 when [x·k - 3σ, x·k + 3σ] misses [0, N] on
  either axis (the repo's test mixes pixels and bins; ours keeps bins).
Loss: one-hot KL summed over bins, summed over batch, joints and axes, divided by B (``NMTCritierion``);
Gaussian KL averaged over bins, times the weight, averaged over batch and joints, summed over axes
(``KLDiscretLoss``). The scales differ by about N·K, so a learning rate does not transfer between the two.
Decoding: argmax of each softmax, x = (i + 0.5)/k; score = min(max p_x, max p_y) as in the repo's Gaussian
validation and mmpose (the repo's one-hot validation takes the max; we use one rule for both, ours). With
``use_dark`` the argmax is refined by 1-D DARK (mmpose's ``use_dark``) on the probabilities, with blur width
``sigma`` (for one-hot labels ``sigma`` is used only there; ours).
Flip test: the x logits reversed and the pairs swapped; the merge averages logits for Gaussian labels and
probabilities for one-hot labels, as the repo does for each.

Head and init: the repo's ``PoseResNet`` (``lib/models/pose_resnet.py``): a 1x1 ``final_layer`` to K maps,
initialised N(0, 0.001) with bias 0 in ``init_weights``, then ``mlp_head_x`` / ``mlp_head_y``, which
``init_weights`` never touches, so they keep PyTorch's default ``nn.Linear`` init; we follow the repo (mmpose's
``SimCCHead`` draws them from N(0, 0.01) instead).

Defaults per input (H, W). heatbench's backbone is a ResNet with SimpleBaseline's deconvolutions, so the
64x64 and 128x128 defaults are the repo's ResNet-50 SimDR configs
(``experiments/coco/resnet/simdr/original/nmt_res50_{64x64,128x128}_d256x3_adam_lr1e-3_split_3_deconv3.yaml``):
one-hot, k=3, ε=0.1 (the configs leave ``LABEL_SMOOTHING`` at ``lib/config/default.py``'s 0.1). From 256x192
up the label switches to the Gaussian: 256x192 Gaussian k=2, σ=6 (mmpose's
``simcc_res50_8xb64-210e_coco-256x192.py``; the repo's HRNet-W48 config has σ=4); 256x256 Gaussian k=2, σ=6,
ε=0.2; 384x288 Gaussian k=2, σ=6 (the ResNet row). ``sigma`` at 64x64 and 128x128 only sizes the optional
1-D DARK blur (ours: 1 px, 3 bins, at 64 and 4/3 px, 4 bins, at 128, mmpose's 3 px at 192 px width scaled
with the input). Other sizes take the dataclass defaults, mmpose's SimCC codec (Gaussian, k=2, σ=6).
"""
from __future__ import annotations

import dataclasses
import math
from typing import ClassVar, Literal, NamedTuple, get_args

import torch
from torch import nn

from .. import ops
from ..decoders.argmax import max_last
from ..decoders.dark import dark_1d
from ..representation import (FlipPairs, Representation, check_choice, check_flag, check_number, init_head_,
                              map_size, zip_tensors)

Label = Literal["gaussian", "onehot"]
_LABELS = get_args(Label)



@dataclasses.dataclass(frozen=True)
class SimCCConfig:
    label: Label = "gaussian"      # "onehot" = SimDR with label smoothing, "gaussian" = SA-SimDR / SimCC*
    split_ratio: float = 2.0       # k, bins per input pixel
    sigma: float = 6.0             # Gaussian label std in bins; also the 1-D DARK blur width
    label_smoothing: float = 0.1   # ε of the one-hot label (the repo's default)
    use_dark: bool = False         # refine the argmax with 1-D DARK (mmpose)

    def __post_init__(self):
        check_choice("label", self.label, _LABELS)
        check_number("split_ratio", self.split_ratio, above=0, unit=" bins per pixel")
        check_number("sigma", self.sigma, above=0, unit=" bins")
        check_number("label_smoothing", self.label_smoothing, at_least=0, below=1)
        check_flag("use_dark", self.use_dark)


# (H, W) -> the paper's configuration at that input size; see the module docstring for the sources.
_DEFAULTS: dict[tuple[int, int], SimCCConfig] = {
    (64, 64): SimCCConfig(label="onehot", split_ratio=3.0, sigma=3.0, label_smoothing=0.1),
    (128, 128): SimCCConfig(label="onehot", split_ratio=3.0, sigma=4.0, label_smoothing=0.1),
    (256, 192): SimCCConfig(label="gaussian", split_ratio=2.0, sigma=6.0),
    (256, 256): SimCCConfig(label="gaussian", split_ratio=2.0, sigma=6.0, label_smoothing=0.2),
    (384, 288): SimCCConfig(label="gaussian", split_ratio=2.0, sigma=6.0),
}


class SimCCOutputs(NamedTuple):
    x_logits: torch.Tensor  # (B, K, N_x)
    y_logits: torch.Tensor  # (B, K, N_y)


class SimCCTargets(NamedTuple):
    x: torch.Tensor       # (B, K, N_x) label over the x bins
    y: torch.Tensor       # (B, K, N_y)
    weight: torch.Tensor  # (B, K) 1 for a labelled keypoint whose label lies on the bins, else 0


class SimCCHead(nn.Module):
    """Features (B, C, H_f, W_f) -> one map per keypoint -> flattened -> Linear to N_x and to N_y logits."""

    def __init__(self, in_channels: int, num_keypoints: int, feature_size: tuple[int, int], bins: tuple[int, int]):
        super().__init__()
        feature_height, feature_width = feature_size
        bins_y, bins_x = bins
        self.final_layer = init_head_(nn.Conv2d(in_channels, num_keypoints, kernel_size=1))
        self.x_linear = nn.Linear(feature_height * feature_width, bins_x)
        self.y_linear = nn.Linear(feature_height * feature_width, bins_y)

    def forward(self, features: torch.Tensor) -> SimCCOutputs:
        joints = self.final_layer(features).flatten(2)  # (B, K, H_f * W_f)
        return SimCCOutputs(self.x_linear(joints), self.y_linear(joints))


def _kl_per_bin(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(..., N) pointwise t·(log t - log softmax(z)), 0 where t = 0: the terms of torch's KLDivLoss."""
    return torch.special.xlogy(target, target) - target * logits.log_softmax(dim=-1)


class SimCC(Representation):
    """SimCC with a one-hot (label-smoothed) or Gaussian label; see the module docstring."""

    config_class: ClassVar[type] = SimCCConfig
    floor_variants: ClassVar[tuple[str, ...]] = ("label", "use_dark")

    def __init__(self, config: SimCCConfig, input_size: tuple[int, int], num_keypoints: int):
        super().__init__(config, input_size, num_keypoints)
        height, width = self.input_size
        k = config.split_ratio
        # The exact flip needs the bins to tile [0, W] exactly: N_x / k == W (up to float rounding of k, e.g. 1.1).
        if not all(math.isclose(size * k, round(size * k), abs_tol=1e-6) for size in (height, width)):
            raise ValueError(
                f"split_ratio {k} must give a whole number of bins on input (H, W)={self.input_size}; "
                f"got {height * k:g} x {width * k:g}")
        self.bins = (round(height * k), round(width * k))  # (N_y, N_x)

    @classmethod
    def default_config(cls, input_size: tuple[int, int]) -> SimCCConfig:
        return _DEFAULTS.get(tuple(int(size) for size in input_size), SimCCConfig())

    @property
    def floor_tolerance_px(self) -> float:
        """Half a bin per axis, √2/(2k) px Euclidean, plus 1e-4 px of float32 rounding at coordinates < 10^3.

        The one-hot ideal output peaks on the bin containing the keypoint and the Gaussian one on the bin whose
        centre is nearest, so the argmax is at most half a bin, 1/(2k) px, from the keypoint on each axis.
        1-D DARK leaves the flat-tailed one-hot label on its bin centre and moves the Gaussian label to within
        1e-3 px of the keypoint (σ >= 2 bins), both inside the bound, wherever its zero-padded blur stays on the
        bins: (blur size // 2 + 2) bins from the border, 10 px at 256x192 defaults. Nearer the border the blur
        pulls the peak inward (0.7 px measured 4 px from the border at k=1.5, σ=6), as it does in mmpose.
        """
        return math.sqrt(2) / (2 * self.config.split_ratio) + 1e-4

    def output_size(self) -> tuple[int, int]:
        return self.bins

    def build_head(self, in_channels: int, in_stride: int) -> nn.Module:
        return SimCCHead(in_channels, self.num_keypoints, map_size(self.input_size, in_stride), self.bins)

    def _axis_label(self, coord: torch.Tensor, num_bins: int) -> tuple[torch.Tensor, torch.Tensor]:
        """coord (B, K) canonical px -> label (B, K, N) and (B, K) bool: whether the label lies on the bins."""
        mu = coord * self.config.split_ratio  # bin coordinate: bin i covers [i, i + 1)
        if self.config.label == "gaussian":
            sigma = self.config.sigma
            centres = ops.cell_centres(num_bins, device=coord.device, dtype=coord.dtype)
            label = ops.gaussian((centres - mu.unsqueeze(-1)).square_(), sigma, in_place=True)
            label.div_(sigma * math.sqrt(2 * math.pi))
            return label, (mu + 3 * sigma >= 0) & (mu - 3 * sigma <= num_bins)
        epsilon = self.config.label_smoothing
        index = mu.floor().clamp(0, num_bins - 1).long().unsqueeze(-1)
        label = torch.full((*coord.shape, num_bins), epsilon / (num_bins - 1), device=coord.device, dtype=coord.dtype)
        return label.scatter(-1, index, 1 - epsilon), (mu >= 0) & (mu < num_bins)

    def encode(self, keypoints: torch.Tensor, visible: torch.Tensor) -> SimCCTargets:
        """(B, K, 2) canonical keypoints, (B, K) visibility -> labels (B, K, N_x), (B, K, N_y) and (B, K) weight."""
        keypoints, weight = ops.sanitize_keypoints(keypoints, visible)
        bins_y, bins_x = self.bins
        label_x, on_x = self._axis_label(keypoints[..., 0], bins_x)
        label_y, on_y = self._axis_label(keypoints[..., 1], bins_y)
        return SimCCTargets(label_x, label_y, weight * (on_x & on_y).to(weight.dtype))

    def loss(self, outputs: SimCCOutputs, targets: SimCCTargets) -> torch.Tensor:
        """Scalar KL(label || softmax(logits)) over (B, K, N) bins, reduced as the repo's loss for the label."""
        kl_x = _kl_per_bin(outputs.x_logits, targets.x)
        kl_y = _kl_per_bin(outputs.y_logits, targets.y)
        batch, joints = targets.weight.shape
        if self.config.label == "gaussian":  # KLDiscretLoss
            per_joint = kl_x.mean(dim=-1) + kl_y.mean(dim=-1)
            normaliser = batch * joints
        else:  # NMTCritierion
            per_joint = kl_x.sum(dim=-1) + kl_y.sum(dim=-1)
            normaliser = batch
        return (per_joint * targets.weight).sum() / normaliser

    def decode(self, outputs: SimCCOutputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, K, N_x), (B, K, N_y) -> (B, K, 2) canonical keypoints and (B, K) scores."""
        prob_x = outputs.x_logits.softmax(dim=-1)
        prob_y = outputs.y_logits.softmax(dim=-1)
        score_x, index_x = max_last(prob_x)
        score_y, index_y = max_last(prob_y)
        if self.config.use_dark:
            index_x, _ = dark_1d(prob_x, self.config.sigma)
            index_y, _ = dark_1d(prob_y, self.config.sigma)
        bins = torch.stack([index_x, index_y], dim=-1).to(prob_x.dtype)  # (B, K, 2) bin coordinates
        return (bins + 0.5) / self.config.split_ratio, torch.minimum(score_x, score_y)

    def flip_back(self, outputs: SimCCOutputs, flip_pairs: FlipPairs) -> SimCCOutputs:
        # Bin i, centre (i + 0.5)/k, mirrors to W - (i + 0.5)/k, the centre of bin N_x - 1 - i: a plain reversal.
        perm = ops.flip_permutation(self.num_keypoints, flip_pairs, device=outputs.x_logits.device)
        return SimCCOutputs(outputs.x_logits.flip(-1)[:, perm], outputs.y_logits[:, perm])

    def merge_flipped(self, outputs: SimCCOutputs, flipped_back: SimCCOutputs) -> SimCCOutputs:
        """Gaussian: the mean of the logits. One-hot: the log of the mean probability, softmax-then-average as in
        the repo, returned as logits (softmax(log p) = p) so that ``decode`` takes the merge unchanged."""
        if self.config.label == "gaussian":
            return super().merge_flipped(outputs, flipped_back)
        return zip_tensors(
            lambda a, b: torch.logaddexp(a.log_softmax(dim=-1), b.log_softmax(dim=-1)) - math.log(2),
            outputs, flipped_back)

    def ideal_outputs(self, keypoints: torch.Tensor, visible: torch.Tensor) -> SimCCOutputs:
        """Logits whose softmax is the label, normalised over the bins (a Gaussian cut by the border sums to < 1).

        The log is clamped at the dtype's smallest normal number so that zero labels give finite logits.
        """
        targets = self.encode(keypoints, visible)

        def log_distribution(label: torch.Tensor) -> torch.Tensor:
            tiny = torch.finfo(label.dtype).tiny
            return (label / label.sum(dim=-1, keepdim=True).clamp_min(tiny)).clamp_min(tiny).log()

        return SimCCOutputs(log_distribution(targets.x), log_distribution(targets.y))
