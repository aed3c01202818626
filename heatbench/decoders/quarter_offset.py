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
    apply = peak.found & (x > 1) & (x < width - 1) & (y > 1) & (y < height - 1)
    # The four neighbours by flat index, flat + steps * apply: where no offset applies, all four reads are the
    # peak itself, and the offset is 0.
    steps = torch.tensor([-1, 1, -width, width], device=heatmaps.device)  # left, right, up, down
    cells = torch.addcmul(peak.flat.unsqueeze(-1), steps, apply.unsqueeze(-1))
    neighbours = heatmaps.flatten(-2).gather(-1, cells).view(*cells.shape[:-1], 2, 2)  # (B, K, axis, -/+)
    offset = neighbours.diff(dim=-1).squeeze(-1).sign_().mul_(0.25)
    return peak.coords + offset, peak.score
