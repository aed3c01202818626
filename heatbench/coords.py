"""The one place where dataset coordinates meet heatbench's canonical frame.

Canonical coordinates (``docs/conventions.md``): continuous image-plane coordinates in which pixel (i, j)
covers [i, i+1) x [j, j+1), so its centre is (i + 0.5, j + 0.5) and the image spans [0, W] x [0, H].
COCO, CrowdPose, AIC, OCHuman and DeepLabCut count pixel centres from 0; MPII counts them from 1.
Nothing else in heatbench adds or subtracts 0.5 to move between these frames.
"""
from __future__ import annotations

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor


def pixel_centre_to_canonical(xy: ArrayLike, first_index: int = 0) -> ArrayLike:
    """Dataset coordinates whose pixel centres are ``first_index, first_index + 1, ...`` -> canonical.

    ``first_index`` is 0 for COCO-style and DeepLabCut data, 1 for MPII. ``xy``: (..., 2) in (x, y) order.
    """
    return xy - first_index + 0.5


def canonical_to_pixel_centre(xy: ArrayLike, first_index: int = 0) -> ArrayLike:
    """Inverse of :func:`pixel_centre_to_canonical`, used when exporting (e.g. to pycocotools)."""
    return xy + first_index - 0.5


def flip_horizontal(keypoints: ArrayLike, width: float) -> ArrayLike:
    """Mirror canonical (..., 2) keypoints in an image of ``width``: x -> W - x, with no one-pixel shift."""
    flipped = keypoints.clone() if isinstance(keypoints, torch.Tensor) else keypoints.copy()
    flipped[..., 0] = width - keypoints[..., 0]
    return flipped


def interior_margin_px(side: int) -> float:
    """Distance from the edge, in input px, that makes a keypoint interior on an axis of ``side`` px: where
    every representation's ``floor_tolerance_px`` holds (``heatbench.floor`` says why this margin)."""
    return max(12.0, side / 8)
