"""Keypoints for the representation tests: random sub-pixel positions, and the labels of a mirrored image."""
from __future__ import annotations

import torch

from heatbench.coords import flip_horizontal
from heatbench.ops import flip_permutation


def random_keypoints(input_size: tuple[int, int], count: int, batch: int, seed: int = 0,
                     margin: float = 0.0) -> torch.Tensor:
    """(batch, count, 2) uniform sub-pixel keypoints in [margin, W - margin] x [margin, H - margin]."""
    height, width = input_size
    unit = torch.rand(batch, count, 2, generator=torch.Generator().manual_seed(seed))
    return margin + unit * torch.tensor([width - 2 * margin, height - 2 * margin])


def mirrored(keypoints: torch.Tensor, width: int, flip_pairs) -> torch.Tensor:
    """The labels of the mirrored image: x -> W - x, and joint j takes the place of its partner."""
    return flip_horizontal(keypoints, width)[:, flip_permutation(keypoints.shape[1], flip_pairs)]
