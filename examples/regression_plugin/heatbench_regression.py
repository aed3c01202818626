"""Direct coordinate regression, an example heatbench plugin.

Method: global-average-pool the shared features and regress the 2K coordinates with one linear layer, the
simplest representation there is (Toshev & Szegedy, "DeepPose", CVPR 2014, without its cascade — ours, to
keep the example short). Coordinates are regressed in the input-centred frame x_n = 2x/W - 1 (canonical x in
[0, W] -> [-1, 1]), so a horizontal flip is x_n -> -x_n. Loss: L1 on visible keypoints (ours). Score: 1 for
every keypoint, since the method predicts no confidence. Defaults: none to tune.

The floor is exact (the output *is* the coordinate), so ``floor_tolerance_px`` only covers float32 rounding.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from heatbench import Representation
from heatbench.ops import flip_permutation, sanitize_keypoints


@dataclass(frozen=True)
class RegressionConfig:
    dropout: float = 0.0  # before the linear layer; 0 keeps the example deterministic to read

    def __post_init__(self):
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1)")


class Regression(Representation):
    config_class: ClassVar[type] = RegressionConfig
    floor_tolerance_px: ClassVar[float] = 1e-3  # float32 round-off of (x_n + 1) W / 2 for W <= 512

    def output_size(self) -> tuple[int, int]:
        return (1, 1)

    def _scale(self, reference: torch.Tensor) -> torch.Tensor:
        height, width = self.input_size
        return reference.new_tensor([width / 2, height / 2])

    def build_head(self, in_channels: int, in_stride: int) -> nn.Module:
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(self.config.dropout),
                             nn.Linear(in_channels, 2 * self.num_keypoints), nn.Unflatten(1, (self.num_keypoints, 2)))

    def encode(self, keypoints: torch.Tensor, visible: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keypoints, weight = sanitize_keypoints(keypoints, visible)
        return keypoints / self._scale(keypoints) - 1, weight  # (B, K, 2) normalised, (B, K)

    def loss(self, outputs: torch.Tensor, targets: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        normalised, weight = targets
        per_keypoint = (outputs.float() - normalised).abs().sum(-1)  # (B, K)
        return (per_keypoint * weight).sum() / weight.sum().clamp(min=1)

    def decode(self, outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = outputs.float()
        return (outputs + 1) * self._scale(outputs), torch.ones(outputs.shape[:2], device=outputs.device)

    def flip_back(self, outputs: torch.Tensor, flip_pairs) -> torch.Tensor:
        flipped = outputs[:, flip_permutation(self.num_keypoints, flip_pairs, outputs.device)]
        return flipped * flipped.new_tensor([-1.0, 1.0])

    def ideal_outputs(self, keypoints: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        return self.encode(keypoints, visible)[0]
