"""What the codec speed benchmarks share: the batch, the resolutions and their keypoints, the timing and its
report, and the per-keypoint NumPy heatmap pieces (drawing a Gaussian, the heatmap decoders) from which the
references of both ``heatmap`` (``test_codec_speed.py``) and ``sahr`` (``test_representation_codec_speed.py``)
are built.
"""
from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from scipy.ndimage import convolve1d

from heatbench.decoders.dark import blur_kernel_size

BATCH, KEYPOINTS = 256, 17
RESOLUTIONS = [(64, 64), (128, 128), (256, 192)]
REFERENCE_RUNS = 2

RES = pytest.mark.parametrize("input_size", RESOLUTIONS, ids=lambda size: f"{size[0]}x{size[1]}")


def uniform_keypoints(input_size) -> torch.Tensor:
    """(BATCH, KEYPOINTS, 2) canonical keypoints drawn uniformly in the (H, W) input, seeded."""
    height, width = input_size
    return torch.rand(BATCH, KEYPOINTS, 2, generator=torch.Generator().manual_seed(0)) * torch.tensor([width, height])


def best_seconds(function, runs: int) -> float:
    best = math.inf
    for _ in range(runs):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def report(benchmark, label: str, batched, reference, one_pass) -> None:
    """Time ``reference`` and ``one_pass`` (a single write of the encoded targets or read of the decoded
    outputs: what no batched code can beat, so reference / one pass is the speedup's ceiling) and put the
    ratios into ``extra_info``."""
    reference_s = best_seconds(reference, REFERENCE_RUNS)
    one_pass_s = best_seconds(one_pass, 10)
    batched_s = benchmark.stats.stats.min if benchmark.stats else best_seconds(batched, 3)
    speedup, ceiling = reference_s / batched_s, reference_s / one_pass_s
    benchmark.extra_info.update(speedup_vs_numpy=round(speedup, 1), numpy_s=round(reference_s, 4),
                                batched_s=round(batched_s, 5), one_pass_s=round(one_pass_s, 5),
                                speedup_ceiling=round(ceiling, 1), threads=torch.get_num_threads())
    print(f"\n{label}: batched {batched_s * 1e3:.2f} ms, one pass {one_pass_s * 1e3:.2f} ms, "
          f"per-keypoint NumPy {reference_s * 1e3:.1f} ms, speedup {ratio(speedup)} (ceiling {ratio(ceiling)})")


def ratio(value: float) -> str:
    """``62x``, ``0.3x``: whole numbers from 10 up, two significant digits below."""
    return f"{value:.0f}x" if value >= 10 else f"{value:.2g}x"


def opencv_gaussian_kernel(size: int) -> np.ndarray:
    """The normalised ``size``-tap Gaussian of OpenCV's std for that size, 0.3 ((size - 1) / 2 - 1) + 0.8."""
    deviation = 0.3 * ((size - 1) / 2 - 1) + 0.8
    kernel = np.exp(-((np.arange(size) - size // 2) ** 2) / (2 * deviation**2)).astype(np.float32)
    return kernel / kernel.sum()


def draw_gaussian(heatmap: np.ndarray, centre: np.ndarray, window_centre: np.ndarray, sigma: float,
                  truncate: bool) -> tuple[slice, slice] | None:
    """Draw the peak-1 Gaussian of std ``sigma`` cells at ``centre`` (x, y) onto the zero (h, w) ``heatmap``
    (cell (i, j) centred at (i, j)): on the window of cells within 3 sigma of ``window_centre`` if
    ``truncate``, as mmpose does, else on the whole map. Returns the window as (rows, columns) slices, or None,
    drawing nothing, where it holds no cell."""
    height, width = heatmap.shape
    radius = 3 * sigma
    if window_centre[0] - radius > width - 1 or window_centre[0] + radius < 0 \
            or window_centre[1] - radius > height - 1 or window_centre[1] + radius < 0:
        return None
    x0, x1 = int(max(0, math.ceil(window_centre[0] - radius))), int(min(width - 1, window_centre[0] + radius)) + 1
    y0, y1 = int(max(0, math.ceil(window_centre[1] - radius))), int(min(height - 1, window_centre[1] + radius)) + 1
    window = (slice(y0, y1), slice(x0, x1))
    columns, rows = np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32)
    if truncate:
        columns, rows, heatmap = columns[window[1]], rows[window[0]], heatmap[window]
    gx = np.exp(-((columns - centre[0]) ** 2) / (2 * sigma**2))
    gy = np.exp(-((rows - centre[1]) ** 2) / (2 * sigma**2))
    heatmap[...] = np.outer(gy, gx)
    return window


def _blur(heatmap: np.ndarray, sigma: float) -> np.ndarray:
    kernel = opencv_gaussian_kernel(blur_kernel_size(sigma))
    blurred = convolve1d(convolve1d(heatmap, kernel, axis=1, mode="constant"), kernel, axis=0, mode="constant")
    return blurred * (heatmap.max() / blurred.max()) if blurred.max() > 0 else blurred


def _newton(hessian: np.ndarray, gradient: np.ndarray) -> np.ndarray | None:
    if np.linalg.det(hessian) == 0:
        return None
    step = -np.linalg.solve(hessian, gradient)
    return step if np.all(np.abs(step) <= 1) else None


def decode_heatmap(heatmap: np.ndarray, decoder: str, sigma: float) -> tuple[np.ndarray, float]:
    """One (h, w) map -> its (x, y) keypoint in cells (cell (i, j) centred at (i, j)) and score, by ``decoder``
    (argmax, quarter_offset, dark, udp_dark; DARK's blur sized from ``sigma`` cells)."""
    height, width = heatmap.shape
    y, x = divmod(int(np.argmax(heatmap)), width)
    peak = heatmap[y, x]
    if peak <= 0 or peak == heatmap.min():
        return np.array([(width - 1) / 2, (height - 1) / 2], dtype=np.float32), 0.0
    position = np.array([x, y], dtype=np.float32)
    if decoder == "quarter_offset" and 1 < x < width - 1 and 1 < y < height - 1:
        position += 0.25 * np.sign([heatmap[y, x + 1] - heatmap[y, x - 1], heatmap[y + 1, x] - heatmap[y - 1, x]])
    elif decoder == "dark" and 1 < x < width - 2 and 1 < y < height - 2:
        log = np.log(np.maximum(_blur(heatmap, sigma), 1e-10))
        gradient = 0.5 * np.array([log[y, x + 1] - log[y, x - 1], log[y + 1, x] - log[y - 1, x]])
        dxy = 0.25 * (log[y + 1, x + 1] - log[y - 1, x + 1] - log[y + 1, x - 1] + log[y - 1, x - 1])
        hessian = np.array([[0.25 * (log[y, x + 2] - 2 * log[y, x] + log[y, x - 2]), dxy],
                            [dxy, 0.25 * (log[y + 2, x] - 2 * log[y, x] + log[y - 2, x])]])
        step = _newton(hessian, gradient)
        position += 0 if step is None else step
    elif decoder == "udp_dark":
        log = np.pad(np.log(np.clip(_blur(heatmap, sigma), 1e-3, 50.0)), 1, mode="edge")
        px, py = x + 1, y + 1
        gradient = 0.5 * np.array([log[py, px + 1] - log[py, px - 1], log[py + 1, px] - log[py - 1, px]])
        dxy = 0.5 * (log[py + 1, px + 1] - log[py, px + 1] - log[py + 1, px] + 2 * log[py, px]
                     - log[py, px - 1] - log[py - 1, px] + log[py - 1, px - 1])
        hessian = np.array([[log[py, px + 1] - 2 * log[py, px] + log[py, px - 1], dxy],
                            [dxy, log[py + 1, px] - 2 * log[py, px] + log[py - 1, px]]])
        step = _newton(hessian + np.finfo(np.float32).eps * np.eye(2), gradient)
        position += 0 if step is None else step
    return position, peak
