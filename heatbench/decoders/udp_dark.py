"""UDP-DARK decoding: DARK's Newton step with step-1 differences on an edge-padded, clamped log-map.

Method (Huang et al., "The Devil is in the Details: Delving into Unbiased Data Processing for Human Pose
Estimation", CVPR 2020, https://arxiv.org/abs/1911.07524; mmpose ``refine_keypoints_dark_udp``, the decoder
of its ``UDPHeatmap`` codec): modulate the map as DARK does (``dark.log_modulated``, same kernel rule), clamp to
[1e-3, 50], log, edge-pad by one cell, and at the argmax take g = (L[x+1] - L[x-1]) / 2,
d_xx = L[x+1] - 2 L[x] + L[x-1] and the seven-point d_xy = (L[y+1, x+1] - L[y, x+1] - L[y+1, x] + 2 L[y, x]
- L[y, x-1] - L[y-1, x] + L[y-1, x-1]) / 2; the step is -(H + eps I)^-1 g with eps = float32 machine
epsilon. Step-1 differences are exact on a quadratic just as step-2 ones are, but read only the 3x3
neighbourhood, so with edge padding the step is taken everywhere, borders included. Score: the maximum of
the unmodulated map.

Coordinates: heatmap index units, cell (i, j) centred at (i, j). Maps without a peak keep the argmax
module's fallback (the centre, score 0); steps longer than one cell are discarded (``dark`` module, "Guard",
ours).
"""
from __future__ import annotations

import torch

from .argmax import find_peak
from .dark import log_modulated, newton_step, refine

_CLAMP = (1e-3, 50.0)                               # mmpose: np.clip(heatmaps, 1e-3, 50.)
_HESSIAN_EPS = torch.finfo(torch.float32).eps       # mmpose: hessian + np.finfo(np.float32).eps * np.eye(2)

# The 3x3 neighbourhood as (dx, dy) columns; reads past the border are clamped, i.e. an edge-padded map.
_STENCIL = torch.tensor([[0, 1, -1, 0, 0, 1, -1],
                         [0, 0, 0, 1, -1, 1, -1]])


def decode(heatmaps: torch.Tensor, sigma: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, K, H, W) maps and the label's ``sigma`` in cells -> (B, K, 2) index coordinates, (B, K) scores."""
    peak = find_peak(heatmaps)
    values = log_modulated(heatmaps, peak, sigma, _STENCIL, *_CLAMP)  # (B, K, 7), edge-padded reads
    c, xp, xm, yp, ym, pp, mm = values.unbind(-1)  # p = +1, m = -1 as (x, y)
    gradient = 0.5 * torch.stack((xp - xm, yp - ym), dim=-1)
    dxy = 0.5 * (pp - xp - yp + 2 * c - xm - ym + mm)
    hessian = torch.stack((xp - 2 * c + xm + _HESSIAN_EPS, dxy, yp - 2 * c + ym + _HESSIAN_EPS), dim=-1)
    step, det = newton_step(gradient, hessian)
    return refine(peak, step, det != 0), peak.score
