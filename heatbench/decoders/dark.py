"""DARK decoding: a Newton step on the log of the blurred heatmap, from the argmax to the sub-cell maximum.

Method (Zhang et al., "Distribution-Aware Coordinate Representation for Human Pose Estimation", CVPR 2020,
https://arxiv.org/abs/1910.06278; mmpose ``refine_keypoints_dark``): the log of a Gaussian is a quadratic,
so one Newton step from the argmax m lands on its centre: mu = m - H^-1 g, with g and H the gradient and
Hessian of the log-map at m. Trained maps are not Gaussian, so the map is first *modulated*: blurred by a
Gaussian kernel (zero padding) and rescaled so its maximum is the original maximum. Then it is clamped at
1e-10 and logged. g uses central differences, (L[x+1] - L[x-1]) / 2; H uses step-2 differences,
d_xx = (L[x+2] - 2 L[x] + L[x-2]) / 4 and d_xy = (L[y+1, x+1] - L[y-1, x+1] - L[y+1, x-1] + L[y-1, x-1]) / 4.
The step is taken only when 1 < x < W - 2 and 1 < y < H - 2 (the step-2 stencil fits in the map) and
det H != 0; otherwise the argmax stands. Score: the maximum of the unmodulated map.

Coordinates: heatmap index units, cell (i, j) centred at (i, j). Maps without a peak keep the argmax
module's fallback (the centre, score 0).

Blur kernel (one rule for 2-D and 1-D): size (20 sigma - 7) // 3, made odd by subtracting 1, at least 1,
with sigma the training Gaussian's sigma in cells (or bins), and the kernel's own standard deviation
0.3 ((size - 1) / 2 - 1) + 0.8, OpenCV's rule for ``GaussianBlur(..., sigmaX=0)``. The size rule is the
inverse of OpenCV's, so the kernel's deviation matches the label's. It is mmpose's SimCC 1-D DARK rule; for
2-D, mmpose's configs set the size by hand, 11 for sigma 2 and 17 for sigma 3, which the rule reproduces
(ours for other sigmas, e.g. 3 at sigma 1). We sample the Gaussian for every size (ours: OpenCV substitutes
binomial tables for sizes <= 7, (1, 2, 1) / 4 instead of (0.24, 0.52, 0.24) at size 3; both are symmetric,
and on sampled Gaussians at sigma 1 ours measured the lower floor, 0.013 against 0.017 cells at most).

Guard (ours, also in ``udp_dark`` and ``dark_1d``): a Newton step longer than one cell on either axis is
discarded. For a Gaussian the step is at most half a cell (the argmax is the nearest cell); a longer one
means the log-map is not locally quadratic (noise, a plateau, a second peak) and would throw the keypoint
anywhere, up to ~1e8 cells for a nearly singular Hessian, where mmpose applies it.

``dark_1d`` is the same refinement on 1-D vectors (SimCC's ``use_dark``, mmpose ``refine_simcc_dark``):
blur by the same rule, clamp to [1e-3, 50], log, edge-pad by 2, g = (L[x+1] - L[x-1]) / 2,
d_xx = 1e-9 + (L[x+2] - 2 L[x] + L[x-2]) / 4, step -g / d_xx, with no border condition.
"""
from __future__ import annotations

import math

import torch

from .argmax import Peak, find_peak, take_2d

_LOG_FLOOR = 1e-10            # mmpose refine_keypoints_dark: np.maximum(heatmaps, 1e-10)
_CLAMP_1D = (1e-3, 50.0)      # mmpose refine_simcc_dark: np.clip(simcc, 1e-3, 50.)
_CURVATURE_EPS_1D = 1e-9      # mmpose refine_simcc_dark: dxx = 1e-9 + ...
_MAX_STEP = 1.0               # cells; see "Guard" in the module docstring


def blur_kernel_size(sigma: float) -> int:
    """The modulation kernel size for a label of ``sigma`` cells (or bins): (20 sigma - 7) // 3, odd, >= 1."""
    size = int((20 * sigma - 7) // 3)
    size -= size % 2 == 0
    return max(size, 1)


def _blur_matrix(length: int, size: int, device, dtype) -> torch.Tensor:
    """(length, length) banded matrix M with (v @ M)[j] = sum_i v[i] k[i - j + size // 2]: the zero-padded
    correlation of a length-``length`` vector with the Gaussian kernel k of ``size`` taps, whose deviation is
    OpenCV's for that size. A banded matmul is several times faster on CPU than a one-channel convolution."""
    deviation = 0.3 * ((size - 1) / 2 - 1) + 0.8
    taps = torch.arange(size, device=device, dtype=dtype) - size // 2
    kernel = torch.exp(-taps**2 / (2 * deviation**2))
    kernel = kernel / kernel.sum()
    positions = torch.arange(length, device=device)
    offset = positions.unsqueeze(1) - positions.unsqueeze(0) + size // 2  # i - j + r
    inside = (offset >= 0) & (offset < size)
    return torch.where(inside, kernel[offset.clamp(0, size - 1)], torch.zeros((), device=device, dtype=dtype))


def modulate(maps: torch.Tensor, sigma: float, vertical: bool = True) -> torch.Tensor:
    """DARK's modulation of (B, K, H, W) maps: zero-padded Gaussian blur along x (and y if ``vertical``),
    then each map rescaled to its original maximum. A map whose blurred maximum is <= 0 is left unscaled
    (ours: it has no peak and is not refined; this only avoids 0 / 0). Returns a new tensor that the caller
    may modify in place."""
    size = blur_kernel_size(sigma)
    height, width = maps.shape[-2:]
    blurred = maps @ _blur_matrix(width, size, maps.device, maps.dtype)
    if vertical:
        blurred = _blur_matrix(height, size, maps.device, maps.dtype) @ blurred  # the kernel is symmetric
    original_max = maps.flatten(-2).amax(dim=-1)
    blurred_max = blurred.flatten(-2).amax(dim=-1)
    scale = torch.where(blurred_max > 0, original_max / blurred_max.clamp_min(torch.finfo(maps.dtype).tiny), 1.0)
    return blurred.mul_(scale[..., None, None])


def log_modulated(heatmaps: torch.Tensor, peak: Peak, sigma: float, stencil: torch.Tensor, low: float,
                  high: float = math.inf, vertical: bool = True) -> torch.Tensor:
    """log(clamp(modulate(heatmaps), low, high)) at the cells ``peak + stencil`` of each (B, K, H, W) map,
    reads past the border clamped to the edge: (B, K, P) for a (2, P) (dx, dy) stencil, up to a constant per
    map, which every finite difference of the Newton step cancels.

    Only the window that the stencil and the kernel reach is blurred, not the whole map. Rescaling a map by
    s = maximum / blurred maximum adds log s to every log-value, so it matters only through the clamp. For a
    map with a peak, s >= 1 (weights >= 0 summing to <= 1 keep the blur below the positive maximum) and the
    rescaled map stays below its maximum: where every stencil value of the blur is >= ``low`` and the maximum
    is <= ``high``, the clamp does nothing and the window's log-values stand. The other maps with a peak (weak
    or negative ones, where the clamp may act) are modulated in full, so the result is DARK's either way.
    """
    size = blur_kernel_size(sigma)
    margin = size // 2
    height, width = heatmaps.shape[-2:]
    reach_x, reach_y = (int(reach) for reach in stencil.abs().amax(dim=1))  # stencil on the CPU: no sync
    stencil = stencil.to(heatmaps.device)
    x, y = peak.index.unbind(-1)
    columns = x.unsqueeze(-1) + torch.arange(-reach_x - margin, reach_x + margin + 1, device=x.device)
    rows = y.unsqueeze(-1) + torch.arange(-reach_y - margin * vertical, reach_y + margin * vertical + 1,
                                          device=y.device)
    window = take_2d(heatmaps, columns.unsqueeze(-2), rows.unsqueeze(-1))  # (B, K, rows, columns)
    inside = ((rows >= 0) & (rows < height)).unsqueeze(-1) & ((columns >= 0) & (columns < width)).unsqueeze(-2)
    window = torch.where(inside, window, 0.0)  # zero padding, as in ``modulate``
    # The separable blur of the window, valid part only, as one matrix on the flattened window: one matmul
    # of (B K, rows x columns) by (rows x columns, stencil block), not thousands of tiny ones.
    blur_x = _blur_matrix(columns.shape[-1], size, x.device, heatmaps.dtype)[:, margin:-margin or None]
    blur_y = (_blur_matrix(rows.shape[-1], size, x.device, heatmaps.dtype)[:, margin:-margin or None] if vertical
              else torch.ones(1, 1, device=x.device, dtype=heatmaps.dtype))
    blurred = (window.flatten(-2) @ torch.kron(blur_y, blur_x)).view(*window.shape[:-2], 2 * reach_y + 1, -1)
    cells_x = (x.unsqueeze(-1) + stencil[0]).clamp(0, width - 1)  # (B, K, P)
    cells_y = (y.unsqueeze(-1) + stencil[1]).clamp(0, height - 1)
    values = take_2d(blurred, cells_x - x.unsqueeze(-1) + reach_x, cells_y - y.unsqueeze(-1) + reach_y)
    clamp_may_act = peak.found & ((values < low).any(dim=-1) | (peak.score > high))
    if clamp_may_act.any():
        values[clamp_may_act] = take_2d(modulate(heatmaps[clamp_may_act], sigma, vertical),
                                        cells_x[clamp_may_act], cells_y[clamp_may_act])
    return values.clamp_(low, high).log_()


def newton_step(gradient: torch.Tensor, hessian: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """-H^-1 g for (..., 2) gradients and (..., 3) Hessians (d_xx, d_xy, d_yy): (..., 2) steps and the
    (...) determinants. Where det H == 0 the step is meaningless (finite but arbitrary); callers mask it."""
    dxx, dxy, dyy = hessian.unbind(-1)
    gx, gy = gradient.unbind(-1)
    det = dxx * dyy - dxy * dxy
    safe_det = torch.where(det != 0, det, torch.ones_like(det))
    step = -torch.stack((dyy * gx - dxy * gy, dxx * gy - dxy * gx), dim=-1) / safe_det.unsqueeze(-1)
    return step, det


def refine(peak: Peak, step: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, K, 2) coordinates: the peak moved by ``step`` where the peak was found, ``valid`` holds and the
    step is within the one-cell guard; the peak's coordinates elsewhere."""
    apply = peak.found & valid & (step.abs() <= _MAX_STEP).all(dim=-1)
    return torch.where(apply.unsqueeze(-1), peak.coords + step, peak.coords)


# The 3x3 neighbourhood stencil in step-2 units plus the four step-2 axis points, as (dx, dy) columns.
_STENCIL = torch.tensor([[0, 1, -1, 0, 0, 2, -2, 0, 0, 1, 1, -1, -1],
                         [0, 0, 0, 1, -1, 0, 0, 2, -2, 1, -1, 1, -1]])
# Two bins either side, read edge-padded (mmpose pads by 2).
_STENCIL_1D = torch.tensor([[-2, -1, 0, 1, 2], [0, 0, 0, 0, 0]])


def decode(heatmaps: torch.Tensor, sigma: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, K, H, W) maps and the label's ``sigma`` in cells -> (B, K, 2) index coordinates, (B, K) scores."""
    height, width = heatmaps.shape[-2:]
    peak = find_peak(heatmaps)
    values = log_modulated(heatmaps, peak, sigma, _STENCIL, _LOG_FLOOR)  # (B, K, 13)
    x, y = peak.index.unbind(-1)
    c, xp, xm, yp, ym, x2p, x2m, y2p, y2m, pp, pm, mp, mm = values.unbind(-1)  # p = +1, m = -1 as (x, y)
    gradient = 0.5 * torch.stack((xp - xm, yp - ym), dim=-1)
    hessian = 0.25 * torch.stack((x2p - 2 * c + x2m, pp - pm - mp + mm, y2p - 2 * c + y2m), dim=-1)
    step, det = newton_step(gradient, hessian)
    inside = (x > 1) & (x < width - 2) & (y > 1) & (y < height - 2)
    return refine(peak, step, inside & (det != 0)), peak.score


def dark_1d(vectors: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D DARK on (B, K, N) non-negative vectors (e.g. SimCC probabilities), ``sigma`` in bins.

    Returns (B, K) refined coordinates in bin-index units (bin i centred at i) and (B, K) scores (the max).
    """
    maps = vectors.unsqueeze(-2)  # (B, K, 1, N)
    peak = find_peak(maps)
    m2, m1, c, p1, p2 = log_modulated(maps, peak, sigma, _STENCIL_1D, *_CLAMP_1D, vertical=False).unbind(-1)
    step = -0.5 * (p1 - m1) / (_CURVATURE_EPS_1D + 0.25 * (p2 - 2 * c + m2))
    step = torch.stack((step, torch.zeros_like(step)), dim=-1)  # a (dx, 0) step in the 1-row map
    return refine(peak, step, torch.ones_like(peak.found))[..., 0], peak.score
