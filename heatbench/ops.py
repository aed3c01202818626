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


# Below about -87.3 (the log of float32's smallest normal) exp returns subnormals or 0, which the CPU's
# vectorised exp computes an order of magnitude slower; exp(-80) < 2e-35 of a Gaussian's peak or a softmax's
# largest term, so clamping exponents there changes no sum.
EXPONENT_FLOOR = -80.0


def gaussian(distance_sq: torch.Tensor, sigma: float | torch.Tensor, in_place: bool = False) -> torch.Tensor:
    """Unnormalised Gaussian exp(-d^2 / (2 sigma^2)) with peak 1; ``distance_sq`` in the units of sigma^2.

    Floored at exp(EXPONENT_FLOOR) < 2e-35 beyond about 12.6 sigma, where it would be a subnormal or 0 (see
    EXPONENT_FLOOR). ``in_place`` overwrites ``distance_sq`` (a float tensor) with the result: no new tensor
    of its size is allocated, which on large ones saves a write and its page faults.
    """
    exponent = distance_sq.div_(-2 * sigma**2) if in_place else distance_sq / (-2 * sigma**2)
    return exponent.clamp_min_(EXPONENT_FLOOR).exp_()


def heatmap_sigma(input_size: tuple[int, int], stride: int = 4) -> float:
    """Gaussian std in cells for an (H, W) input: max(1, floor(L / 32 + 1/2)), L the map's long side.

    Reproduces the reference configs' values (64x64, 128x128 -> 1; 256x192, 256x256 -> 2; 384x288 -> 3).
    """
    long_side = max(input_size) / stride
    return float(max(1, int(long_side / 32 + 0.5)))


def weighted_outer(rows: torch.Tensor, columns: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(B, K, h) row and (B, K, w) column profiles, (B, K) weight -> the (B, K, h, w) maps
    weight * rows[..., :, None] * columns[..., None, :]: the weight goes on the row profile, so that the
    full-size maps are the one tensor of their size written."""
    return (rows * weight.unsqueeze(-1)).unsqueeze(-1) * columns.unsqueeze(-2)


def gaussian_heatmaps(centre: torch.Tensor, size: tuple[int, int], sigma: float, weight: torch.Tensor,
                      window_centre: torch.Tensor | None = None, truncate: bool = True
                      ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Peak-1 Gaussians of std ``sigma`` cells on an (h, w) grid whose cell (i, j) is centred at (i, j).

    centre (B, K, 2) (x, y) in cells; weight (B, K). The window is the cells within 3 sigma of
    ``window_centre`` (default: ``centre``) on both axes; ``truncate`` zeroes the maps outside it (MSRA, UDP),
    otherwise they cover the whole grid (DARK's unbiased maps). Returns
    - maps (B, K, h, w), each times its returned weight;
    - the window as its two axes, (B, K, w) on x and (B, K, h) on y (the 2-D window is their outer product);
    - weight (B, K): the given one, 0 where the window holds no cell (the encoders' rule).
    Separable: the window and the weight are applied to the 1-D profiles, so the (B, K, h, w) maps are the
    one full-size tensor written.
    """
    window_centre = centre if window_centre is None else window_centre
    height, width = size
    radius = 3 * sigma
    profiles, windows = [], []
    for axis, count in ((0, width), (1, height)):  # two axes, not a loop over B or K
        cells = torch.arange(count, device=centre.device, dtype=centre.dtype)
        profile = gaussian((cells - centre[..., axis, None]).square_(), sigma, in_place=True)  # (B, K, count)
        middle = window_centre[..., axis, None]  # (B, K, 1)
        window = (cells - middle).abs() <= radius
        # The window holds a cell when it holds the cell nearest its centre: the same float test on that one
        # cell, as the test is monotone in the distance. On (B, K), it costs less than a (B, K, count) any.
        nearest = middle.round().clamp(0, count - 1)
        weight = weight * ((nearest - middle).abs() <= radius).squeeze(-1).to(weight.dtype)
        profiles.append(torch.where(window, profile, 0.0) if truncate else profile)
        windows.append(window)
    profile_x, profile_y = profiles
    maps = weighted_outer(profile_y, profile_x, weight)
    return maps, (windows[0], windows[1]), weight


def gaussian_blur(maps: torch.Tensor, size: int) -> torch.Tensor:
    """OpenCV's ``GaussianBlur(maps, (size, size), 0)`` of (..., H, W) maps, size odd: the std is
    0.3 ((size - 1) / 2 - 1) + 0.8 and the border is reflect-101 (``cba|abcd|dcb``), folded into two (H, H)
    and (W, W) matrices so that any map size works, even one smaller than the kernel.
    (OpenCV uses fixed binomial tables for size <= 7; this samples the Gaussian for every size.)
    """
    if size < 1 or size % 2 == 0:
        raise ValueError(f"gaussian_blur: size must be a positive odd number of taps, got {size}")
    deviation = 0.3 * ((size - 1) / 2 - 1) + 0.8
    taps = torch.arange(size, device=maps.device, dtype=maps.dtype) - size // 2
    kernel = gaussian(taps**2, deviation)
    kernel = kernel / kernel.sum()

    def reflect_101_matrix(count: int) -> torch.Tensor:
        source = torch.arange(count, device=maps.device).unsqueeze(-1) + taps.long()  # (count, size)
        period = max(2 * (count - 1), 1)
        source = source.remainder(period)
        source = torch.where(source >= count, period - source, source)
        matrix = torch.zeros(count, count, device=maps.device, dtype=maps.dtype)
        return matrix.scatter_add_(1, source, kernel.expand(count, size))  # (out, in)

    height, width = maps.shape[-2:]
    return reflect_101_matrix(height) @ maps @ reflect_101_matrix(width).T


def softmax_weights(logits: torch.Tensor, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The softmax of each (..., H, W) map of ``scale * logits``, unnormalised: w = exp(scale (z - max z)),
    its sum (...) and log C = logsumexp(scale z) (...), so that p = w / sum.

    w is the one full-size tensor written (shifted, scaled and exponentiated in place); the shift is
    detached, as the softmax does not depend on it.
    """
    peak = logits.detach().flatten(-2).amax(dim=-1)
    exponents = logits - peak[..., None, None]
    if scale != 1:
        exponents.mul_(scale)
    weights = exponents.clamp_min_(EXPONENT_FLOOR).exp_()
    total = weights.sum(dim=(-2, -1))
    return weights, total, scale * peak + total.log()


def soft_argmax(probs: torch.Tensor) -> torch.Tensor:
    """Expected (x, y) of (..., H, W) probability maps -> (..., 2), in cells with cell i centred at i + 0.5.

    Each coordinate is the expectation of its axis's marginal, so no (H, W, 2) grid is built.
    """
    height, width = probs.shape[-2:]
    x = (probs.sum(dim=-2) * cell_centres(width, probs.device, probs.dtype)).sum(dim=-1)
    y = (probs.sum(dim=-1) * cell_centres(height, probs.device, probs.dtype)).sum(dim=-1)
    return torch.stack((x, y), dim=-1)


def inside_input(keypoints: torch.Tensor, input_size: tuple[int, int]) -> torch.Tensor:
    """(..., 2) canonical keypoints -> (...) bool: inside the closed input rectangle [0, W] x [0, H] of (H, W)."""
    height, width = input_size
    x, y = keypoints.unbind(-1)
    return (x >= 0) & (x <= width) & (y >= 0) & (y <= height)
