"""Heatmap codec speed: batched tensor encode / decode against a per-keypoint NumPy version of the same algorithm.

B = 256 instances x K = 17 keypoints at each default resolution (64x64, 128x128, 256x192, with their default
sigma): encode with each encoding, decode with each decoder. The NumPy reference is what a straightforward
port of mmpose's codecs does: a Python loop over instances and keypoints, drawing the MSRA and UDP Gaussians
on their window only and the unbiased one on the whole map, and blurring map by map with
``scipy.ndimage.convolve1d`` (zero padding, the same kernel). Every benchmark first checks that both give the
same answer, so the reference is an independent check of the batched code too.

pytest-benchmark times the batched code; the reference is timed here (best of a few runs, it is slow) and
``speedup_vs_numpy`` = reference / batched (minimum times, both) goes to ``extra_info`` and is printed,
beside ``speedup_ceiling`` = reference / one pass over the maps (one write of the encoded maps, one read of
the decoded ones): where the reference's per-keypoint Python overhead is small next to its own passes over
the maps (large maps), no batched code reaches more than the ceiling. No pass/fail on timing.

    python -m pytest benchmarks/test_codec_speed.py -q --benchmark-enable -p no:cacheprovider -s
"""
from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from scipy.ndimage import convolve1d

from heatbench import build_representation
from heatbench.decoders.dark import blur_kernel_size

BATCH, KEYPOINTS = 256, 17
RESOLUTIONS = [(64, 64), (128, 128), (256, 192)]
REFERENCE_RUNS = 2


# --- the per-keypoint NumPy reference --------------------------------------------------------------------


def reference_grid(representation):
    """(cell (2,), origin) of the representation's grid, canonical x = origin + u * cell, as NumPy."""
    return np.asarray(representation.output_stride_px, dtype=np.float32), np.float32(representation.origin_px)


def reference_encode(representation, keypoints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B, K, 2) canonical keypoints, all labelled -> (B, K, h, w) maps and (B, K) weights."""
    encoding, sigma = representation.config.encoding, representation.config.sigma
    height, width = representation.output_size()
    cell, origin = reference_grid(representation)
    radius = 3 * sigma
    xs, ys = np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32)
    maps = np.zeros((*keypoints.shape[:2], height, width), dtype=np.float32)
    weights = np.zeros(keypoints.shape[:2], dtype=np.float32)
    for b in range(keypoints.shape[0]):
        for k in range(keypoints.shape[1]):
            u = (keypoints[b, k] - origin) / cell
            rounded = np.floor(u + 0.5)
            centre = rounded if encoding == "msra" else u
            window = u if encoding == "unbiased" else rounded
            if window[0] - radius > width - 1 or window[0] + radius < 0 or window[1] - radius > height - 1 \
                    or window[1] + radius < 0:
                continue
            weights[b, k] = 1
            if encoding == "unbiased":
                columns, rows = xs, ys
                maps_region = maps[b, k]
            else:  # draw on the window only, as mmpose does
                x0, x1 = int(max(0, math.ceil(window[0] - radius))), int(min(width - 1, window[0] + radius)) + 1
                y0, y1 = int(max(0, math.ceil(window[1] - radius))), int(min(height - 1, window[1] + radius)) + 1
                columns, rows = xs[x0:x1], ys[y0:y1]
                maps_region = maps[b, k, y0:y1, x0:x1]
            gx = np.exp(-((columns - centre[0]) ** 2) / (2 * sigma**2))
            gy = np.exp(-((rows - centre[1]) ** 2) / (2 * sigma**2))
            maps_region[...] = np.outer(gy, gx)
    return maps, weights


def _blur(heatmap: np.ndarray, sigma: float) -> np.ndarray:
    size = blur_kernel_size(sigma)
    deviation = 0.3 * ((size - 1) / 2 - 1) + 0.8
    kernel = np.exp(-((np.arange(size) - size // 2) ** 2) / (2 * deviation**2)).astype(np.float32)
    kernel /= kernel.sum()
    blurred = convolve1d(convolve1d(heatmap, kernel, axis=1, mode="constant"), kernel, axis=0, mode="constant")
    return blurred * (heatmap.max() / blurred.max()) if blurred.max() > 0 else blurred


def _newton(hessian: np.ndarray, gradient: np.ndarray) -> np.ndarray | None:
    if np.linalg.det(hessian) == 0:
        return None
    step = -np.linalg.solve(hessian, gradient)
    return step if np.all(np.abs(step) <= 1) else None


def reference_decode(representation, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B, K, h, w) maps -> (B, K, 2) canonical keypoints and (B, K) scores."""
    decoder, sigma = representation.config.decoder, representation.config.sigma
    height, width = maps.shape[-2:]
    cell, origin = reference_grid(representation)
    coords = np.zeros((*maps.shape[:2], 2), dtype=np.float32)
    scores = np.zeros(maps.shape[:2], dtype=np.float32)
    for b in range(maps.shape[0]):
        for k in range(maps.shape[1]):
            heatmap = maps[b, k]
            y, x = divmod(int(np.argmax(heatmap)), width)
            peak = heatmap[y, x]
            if peak <= 0 or peak == heatmap.min():
                coords[b, k] = ((width - 1) / 2, (height - 1) / 2)
                continue
            scores[b, k] = peak
            position = np.array([x, y], dtype=np.float32)
            if decoder == "quarter_offset" and 1 < x < width - 1 and 1 < y < height - 1:
                position += 0.25 * np.sign([heatmap[y, x + 1] - heatmap[y, x - 1],
                                            heatmap[y + 1, x] - heatmap[y - 1, x]])
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
            coords[b, k] = origin + position * cell
    return coords, scores


# --- the benchmarks --------------------------------------------------------------------------------------


def _keypoints(input_size) -> torch.Tensor:
    height, width = input_size
    return torch.rand(BATCH, KEYPOINTS, 2, generator=torch.Generator().manual_seed(0)) * torch.tensor([width, height])


def _best_seconds(function, runs: int) -> float:
    best = math.inf
    for _ in range(runs):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def _report(benchmark, label: str, batched, reference, one_pass) -> None:
    """Time ``reference`` and ``one_pass`` (a single read or write of the maps: what no batched code can
    beat, so reference / one pass is the speedup's ceiling) and put the ratios into ``extra_info``."""
    reference_s = _best_seconds(reference, REFERENCE_RUNS)
    one_pass_s = _best_seconds(one_pass, 10)
    batched_s = benchmark.stats.stats.min if benchmark.stats else _best_seconds(batched, 3)
    speedup, ceiling = reference_s / batched_s, reference_s / one_pass_s
    benchmark.extra_info.update(speedup_vs_numpy=round(speedup, 1), numpy_s=round(reference_s, 4),
                                batched_s=round(batched_s, 5), one_pass_s=round(one_pass_s, 5),
                                speedup_ceiling=round(ceiling, 1), threads=torch.get_num_threads())
    print(f"\n{label}: batched {batched_s * 1e3:.2f} ms, one pass over the maps {one_pass_s * 1e3:.2f} ms, "
          f"per-keypoint NumPy {reference_s * 1e3:.1f} ms, speedup {speedup:.0f}x (ceiling {ceiling:.0f}x)")


RES = pytest.mark.parametrize("input_size", RESOLUTIONS, ids=lambda size: f"{size[0]}x{size[1]}")


@RES
@pytest.mark.parametrize("encoding", ["msra", "unbiased", "udp"])
def test_encode(benchmark, input_size, encoding):
    representation = build_representation("heatmap", input_size, KEYPOINTS, encoding=encoding)
    keypoints, visible = _keypoints(input_size), torch.ones(BATCH, KEYPOINTS)
    maps, weights = reference_encode(representation, keypoints.numpy())
    targets = representation.encode(keypoints, visible)
    # float32 exp of the same arguments, computed in different orders
    np.testing.assert_allclose(targets.heatmaps.numpy(), maps, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(targets.weights.numpy(), weights)
    benchmark(representation.encode, keypoints, visible)
    _report(benchmark, f"encode {encoding} {input_size}", lambda: representation.encode(keypoints, visible),
            lambda: reference_encode(representation, keypoints.numpy()), lambda: torch.ones(maps.shape))


@RES
@pytest.mark.parametrize("decoder", ["argmax", "quarter_offset", "dark", "udp_dark"])
def test_decode(benchmark, input_size, decoder):
    representation = build_representation("heatmap", input_size, KEYPOINTS, decoder=decoder)
    maps = representation.ideal_outputs(_keypoints(input_size), torch.ones(BATCH, KEYPOINTS))
    maps = maps + 0.01 * torch.rand(maps.shape, generator=torch.Generator().manual_seed(1))  # a trained map's noise
    coords, scores = reference_decode(representation, maps.numpy())
    decoded, decoded_scores = representation.decode(maps)
    # Blurs summed in different orders move the Newton step by float32 rounding: ~1e-6 cells mostly, up to
    # ~5e-4 cells (2e-3 input px at 64x64) at an edge-padded border peak, whose x-gradient is a difference of
    # nearly equal logs; there both are that far from the float64 answer.
    np.testing.assert_allclose(decoded.numpy(), coords, rtol=0, atol=5e-3)
    np.testing.assert_array_equal(decoded_scores.numpy(), scores)
    benchmark(representation.decode, maps)
    _report(benchmark, f"decode {decoder} {input_size}", lambda: representation.decode(maps),
            lambda: reference_decode(representation, maps.numpy()), lambda: maps.amax(dim=(-2, -1)))
