"""Tensor math shared by several representations: keypoint sanitising, flip permutations, grids, Gaussians.

Everything here is batched, follows the device and dtype of its inputs, and names shapes and units.
Coordinates are canonical input pixels unless a function says otherwise.
"""
from __future__ import annotations

from typing import Sequence

import torch


def sanitize_keypoints(keypoints: torch.Tensor, visible: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero non-finite coordinates and give them weight 0, so no NaN reaches a target or a loss.

    keypoints (B, K, 2), visible (B, K) -> keypoints (B, K, 2) finite, weight (B, K) in {0, 1} float.
    """
    finite = torch.isfinite(keypoints).all(dim=-1)
    weight = ((visible > 0) & finite).to(keypoints.dtype)
    return torch.where(finite.unsqueeze(-1), keypoints, torch.zeros_like(keypoints)), weight


def flip_permutation(num_keypoints: int, flip_pairs: Sequence[tuple[int, int]], device=None) -> torch.Tensor:
    """(K,) index that swaps each left/right pair: ``x[..., perm, ...]`` relabels a flipped output."""
    perm = torch.arange(num_keypoints, device=device)
    for left, right in flip_pairs:
        perm[left], perm[right] = right, left
    return perm


def cell_centres(count: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(count,) centres of unit cells ``i + 0.5``: cell i of a grid with stride s is centred at (i + 0.5) * s."""
    return torch.arange(count, device=device, dtype=dtype) + 0.5


def gaussian(distance_sq: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """Unnormalised Gaussian exp(-d^2 / (2 sigma^2)) with peak 1; ``distance_sq`` in the units of sigma^2."""
    return torch.exp(-distance_sq / (2 * sigma**2))
