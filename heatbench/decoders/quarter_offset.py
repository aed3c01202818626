"""Quarter-offset decoding: the argmax moved a quarter cell towards the larger neighbour on each axis.

Method: i* += 0.25 * sign(P[j*, i* + 1] - P[j*, i* - 1]) and j* += 0.25 * sign(P[j* + 1, i*] - P[j* - 1, i*]),
on the raw map. It halves the worst-case quantisation error of the argmax (0.5 -> 0.25 cell per axis) on a
sub-cell-centred peak and leaves a cell-centred one (symmetric neighbours) where it is. HRNet's
``get_final_preds`` (Sun et al., CVPR 2019, https://arxiv.org/abs/1902.09212) applies it only when
1 < i* < W - 1 and 1 < j* < H - 1, both axes together; we keep that border condition (mmpose's
``refine_keypoints`` tests each axis separately). Maps without a peak keep the argmax
module's fallback (the centre, score 0).

Coordinates: heatmap index units, cell (i, j) centred at (i, j). Score: the maximum.
"""
from __future__ import annotations

import torch

from .argmax import find_peak


def decode(heatmaps: torch.Tensor, sigma: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, K, H, W) maps -> (B, K, 2) index-unit coordinates and (B, K) scores. ``sigma`` is unused."""
    height, width = heatmaps.shape[-2:]
    peak = find_peak(heatmaps)
    x, y = peak.index.unbind(-1)
    # The four neighbours by flat index; clamping only changes reads at the border, where no offset applies.
    steps = torch.tensor([1, -1, width, -width], device=heatmaps.device)  # right, left, down, up
    cells = (y * width + x).unsqueeze(-1) + steps
    neighbours = heatmaps.flatten(-2).gather(-1, cells.clamp_(0, height * width - 1))  # (B, K, 4)
    offset = (neighbours[..., 0::2] - neighbours[..., 1::2]).sign_().mul_(0.25)  # (B, K, 2): right - left, down - up
    size = torch.tensor([width, height], device=heatmaps.device)
    apply = peak.found & ((peak.index > 1) & (peak.index < size - 1)).all(dim=-1)
    return torch.where(apply.unsqueeze(-1), peak.coords + offset, peak.coords), peak.score
