"""Direct coordinate regression from pooled features (DeepPose, Toshev & Szegedy, CVPR 2014, without its
cascade): the smallest complete heatbench plugin."""
import torch
from torch import nn

from heatbench import Representation
from heatbench.ops import flip_permutation


class Regression(Representation):
    floor_tolerance_px = 1e-3  # |decode(ideal_outputs(k)) - k| bound, input px: float32 round-off

    def output_size(self):  # the grid it decodes on: none, the outputs are coordinates
        return (1, 1)

    def build_head(self, in_channels, in_stride):
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_channels, 2 * self.num_keypoints),
                             nn.Unflatten(1, (self.num_keypoints, 2)))

    def encode(self, keypoints, visible):  # (B, K, 2) canonical input px -> [0, 1], and a loss weight
        size = keypoints.new_tensor(self.input_size[::-1])
        return torch.nan_to_num(keypoints) / size, (visible > 0).float()

    def loss(self, outputs, targets):
        target, weight = targets
        return ((outputs.float() - target).abs().sum(-1) * weight).sum() / weight.sum().clamp(min=1)

    def decode(self, outputs):
        outputs = outputs.float()
        return outputs * outputs.new_tensor(self.input_size[::-1]), outputs.new_ones(outputs.shape[:2])

    def flip_back(self, outputs, flip_pairs):  # x -> W - x is u -> 1 - u; left and right swap
        flipped = outputs[:, flip_permutation(self.num_keypoints, flip_pairs, outputs.device)]
        return torch.stack([1 - flipped[..., 0], flipped[..., 1]], dim=-1)

    def ideal_outputs(self, keypoints, visible):
        return self.encode(keypoints, visible)[0]
