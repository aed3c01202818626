"""Heatmap-to-coordinate strategies, one module each, with one signature.

``decode(heatmaps, sigma=2.0) -> (coords, scores)``: heatmaps (B, K, H, W); sigma, the training label's
Gaussian sigma in cells (used by the DARK decoders to size their blur); coords (B, K, 2) float (x, y) in
heatmap *index* units, cell (column i, row j) centred at (i, j); scores (B, K). Converting index units to
canonical input pixels is the job of the representation that drew the map. A map without a positive,
non-flat peak decodes to the map centre with score 0. Batched, gather-based, on the input's device and dtype.
"""
from __future__ import annotations

from typing import Callable

import torch

from . import argmax, dark, quarter_offset, udp_dark

Decoder = Callable[[torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]]

DECODERS: dict[str, Decoder] = {
    "argmax": argmax.decode,
    "quarter_offset": quarter_offset.decode,
    "dark": dark.decode,
    "udp_dark": udp_dark.decode,
}


def get_decoder(name: str) -> Decoder:
    """The decoder registered as ``name``; an unknown name raises ValueError listing the known ones."""
    if name not in DECODERS:
        raise ValueError(f"unknown heatmap decoder {name!r}; known: {', '.join(DECODERS)}")
    return DECODERS[name]
