"""Argmax decoding: the heatmap cell with the largest value, the starting point of every heatmap decoder.

Method: the keypoint is the integer cell (i*, j*) of the map's maximum and its score is that maximum
(SimpleBaseline, Xiao et al., ECCV 2018, https://arxiv.org/abs/1804.06208; HRNet, Sun et al., CVPR 2019).
The quantisation error is up to half a cell per axis.

Coordinates: heatmap *index* units, cell (column i, row j) centred at (i, j); the representation that drew
the map converts to canonical input pixels.

A map without a peak (maximum <= 0, or flat: maximum == minimum) decodes to the map centre
((W - 1) / 2, (H - 1) / 2) with score 0 (ours: mmpose returns -1, a point outside the map; the centre keeps
the prediction inside the image, and score 0 tells refinements and metrics that nothing was found).
"""
from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import torch

# Below this many values (8 MiB of float32), handing rows to other threads costs about what it saves.
_SPLIT_ARGMAX_MIN_VALUES = 1 << 21


class Peak(NamedTuple):
    index: torch.Tensor   # (B, K, 2) long (x, y): the argmax cell, also where no peak was found
    flat: torch.Tensor    # (B, K) long: the same cell in the flattened map, y * W + x
    coords: torch.Tensor  # (B, K, 2) float index units: the argmax cell, or the map centre where no peak
    score: torch.Tensor   # (B, K): the maximum, or 0 where no peak
    found: torch.Tensor   # (B, K) bool: the map has a positive, non-flat maximum


def max_last(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The maximum along the last dimension and its index (the first one on ties, a NaN if there is one),
    like ``values.max(dim=-1)``."""
    if values.device.type == "cpu" and values.dtype in (torch.float32, torch.float64):
        # torch's CPU max-with-index reduces element by element; NumPy's argmax is vectorised: 4x faster on
        # 17x256 maps of 64x48 and 7x on 16x16, measured on 1 thread (benchmarks/test_codec_speed.py).
        index = torch.from_numpy(_numpy_argmax(values.detach().contiguous().numpy()))
        return values.gather(-1, index.unsqueeze(-1)).squeeze(-1), index
    return values.max(dim=-1)


def _numpy_argmax(values: np.ndarray) -> np.ndarray:
    """``values.argmax(axis=-1)`` of a C-contiguous array, its rows split over torch's intra-op thread count:
    NumPy's argmax runs on one core and releases the GIL, and torch's own reductions use all its threads."""
    rows = values.reshape(-1, values.shape[-1])
    parts = min(torch.get_num_threads(), len(rows))
    if parts < 2 or values.size < _SPLIT_ARGMAX_MIN_VALUES:
        return values.argmax(axis=-1)
    index = np.empty(len(rows), dtype=np.intp)
    bounds = [len(rows) * part // parts for part in range(parts + 1)]
    pool = _thread_pool(os.getpid(), parts - 1)  # a forked child gets a pool of its own: the parent's threads are gone
    helpers = [pool.submit(np.argmax, rows[start:stop], -1, index[start:stop])
               for start, stop in zip(bounds[1:-1], bounds[2:])]
    np.argmax(rows[:bounds[1]], -1, index[:bounds[1]])
    for helper in helpers:
        helper.result()
    return index.reshape(values.shape[:-1])


@functools.lru_cache(maxsize=None)
def _thread_pool(pid: int, workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(workers, thread_name_prefix="heatbench-argmax")


def argmax_2d(heatmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, K, H, W) maps -> (B, K, 2) long (x, y) index of each maximum (first one on ties) and (B, K) maximum."""
    index, values, _ = _argmax_2d(heatmaps)
    return index, values


def _argmax_2d(heatmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``argmax_2d`` and the (B, K) flat cell index it unravelled."""
    width = heatmaps.shape[-1]
    values, flat = max_last(heatmaps.flatten(-2))
    return torch.stack((flat % width, flat // width), dim=-1), values, flat


def take_2d(maps: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Values of (B, K, H, W) maps at integer cells x, y of shape (B, K, ...), read as (B, K, ...).

    Reads outside the map are clamped to its edge, which is reading an edge-padded map.
    """
    height, width = maps.shape[-2:]
    index = y.clamp(0, height - 1) * width + x.clamp(0, width - 1)
    values = maps.flatten(-2).gather(-1, index.reshape(*maps.shape[:-2], -1))
    return values.view(index.shape)


def find_peak(heatmaps: torch.Tensor) -> Peak:
    """The argmax of every (B, K, H, W) map, with the no-peak rule of the module docstring applied."""
    height, width = heatmaps.shape[-2:]
    index, maximum, flat = _argmax_2d(heatmaps)
    found = maximum > 0
    # A flat map's first maximum is its first cell, and its last cell holds the maximum too: only such maps
    # can be flat, and only their minimum is read (one pass over the maps instead of two).
    maybe_flat = (flat == 0) & (heatmaps[..., -1, -1] == maximum)
    if maybe_flat.any():
        found[maybe_flat] &= heatmaps[maybe_flat].flatten(-2).amin(dim=-1) != maximum[maybe_flat]
    if found.all():  # what a trained network emits: nothing falls back
        return Peak(index, flat, index.to(heatmaps.dtype), maximum, found)
    centre = torch.tensor([(width - 1) / 2, (height - 1) / 2], device=heatmaps.device, dtype=heatmaps.dtype)
    coords = torch.where(found.unsqueeze(-1), index.to(heatmaps.dtype), centre)
    return Peak(index, flat, coords, torch.where(found, maximum, 0.0), found)


def decode(heatmaps: torch.Tensor, sigma: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, K, H, W) maps -> (B, K, 2) index-unit coordinates and (B, K) scores. ``sigma`` is unused."""
    peak = find_peak(heatmaps)
    return peak.coords, peak.score


def argmax_window(maps: torch.Tensor, radius: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The (2r + 1) x (2r + 1) values around each map's maximum, 0 where the window leaves the map.

    maps (..., H, W) -> peak (..., 2) long (x, y) cell index of the maximum (the first on ties) and
    window (..., 2r + 1, 2r + 1) with window[..., r + dy, r + dx] = maps[..., y + dy, x + dx].
    """
    height, width = maps.shape[-2:]
    flat = maps.flatten(-2)
    peak, _ = argmax_2d(maps)
    offsets = torch.arange(-radius, radius + 1, device=maps.device)
    x = peak[..., 0, None, None] + offsets  # (..., 1, 2r + 1)
    y = peak[..., 1, None, None] + offsets[:, None]  # (..., 2r + 1, 1)
    inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)  # (..., 2r + 1, 2r + 1)
    cells = y.clamp(0, height - 1) * width + x.clamp(0, width - 1)
    values = flat.gather(-1, cells.flatten(-2)).view(cells.shape)
    return peak, torch.where(inside, values, torch.zeros_like(values))
