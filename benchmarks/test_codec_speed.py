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

import numpy as np
import pytest
import torch

from benchmarks.speed import BATCH, KEYPOINTS, RES, decode_heatmap, draw_gaussian, report, uniform_keypoints
from heatbench import build_representation


# --- the per-keypoint NumPy reference --------------------------------------------------------------------


def reference_grid(representation):
    """(cell (2,), origin) of the representation's grid, canonical x = origin + u * cell, as NumPy."""
    return np.asarray(representation.output_stride_px, dtype=np.float32), np.float32(representation.origin_px)


def reference_encode(representation, keypoints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B, K, 2) canonical keypoints, all labelled -> (B, K, h, w) maps and (B, K) weights."""
    encoding, sigma = representation.config.encoding, representation.config.sigma
    cell, origin = reference_grid(representation)
    maps = np.zeros((*keypoints.shape[:2], *representation.output_size()), dtype=np.float32)
    weights = np.zeros(keypoints.shape[:2], dtype=np.float32)
    for b in range(keypoints.shape[0]):
        for k in range(keypoints.shape[1]):
            u = (keypoints[b, k] - origin) / cell
            rounded = np.floor(u + 0.5)
            window = draw_gaussian(maps[b, k], rounded if encoding == "msra" else u,
                                   u if encoding == "unbiased" else rounded, sigma, truncate=encoding != "unbiased")
            weights[b, k] = window is not None
    return maps, weights


def reference_decode(representation, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B, K, h, w) maps -> (B, K, 2) canonical keypoints and (B, K) scores."""
    cell, origin = reference_grid(representation)
    coords = np.zeros((*maps.shape[:2], 2), dtype=np.float32)
    scores = np.zeros(maps.shape[:2], dtype=np.float32)
    for b in range(maps.shape[0]):
        for k in range(maps.shape[1]):
            position, scores[b, k] = decode_heatmap(maps[b, k], representation.config.decoder,
                                                    representation.config.sigma)
            coords[b, k] = origin + position * cell
    return coords, scores


def check_encoding(representation, keypoints: torch.Tensor, visible: torch.Tensor) -> np.ndarray:
    """The batched encoding equals the reference's (also run by the default tests at small batches); its maps."""
    maps, weights = reference_encode(representation, keypoints.numpy())
    targets = representation.encode(keypoints, visible)
    # float32 exp of the same arguments, computed in different orders
    np.testing.assert_allclose(targets.heatmaps.numpy(), maps, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(targets.weights.numpy(), weights)
    return maps


def noisy_ideal_maps(representation, keypoints: torch.Tensor) -> torch.Tensor:
    maps = representation.ideal_outputs(keypoints, torch.ones(keypoints.shape[:2]))
    return maps + 0.01 * torch.rand(maps.shape, generator=torch.Generator().manual_seed(1))  # a trained map's noise


def check_decoding(representation, maps: torch.Tensor) -> None:
    """The batched decoding equals the reference's (also run by the default tests at small batches)."""
    coords, scores = reference_decode(representation, maps.numpy())
    decoded, decoded_scores = representation.decode(maps)
    # Blurs summed in different orders move the Newton step by float32 rounding: ~1e-6 cells mostly, up to
    # ~5e-4 cells (2e-3 input px at 64x64) at an edge-padded border peak, whose x-gradient is a difference of
    # nearly equal logs; there both are that far from the float64 answer.
    np.testing.assert_allclose(decoded.numpy(), coords, rtol=0, atol=5e-3)
    np.testing.assert_array_equal(decoded_scores.numpy(), scores)


# --- the benchmarks --------------------------------------------------------------------------------------


@RES
@pytest.mark.parametrize("encoding", ["msra", "unbiased", "udp"])
def test_encode(benchmark, input_size, encoding):
    representation = build_representation("heatmap", input_size, KEYPOINTS, encoding=encoding)
    keypoints, visible = uniform_keypoints(input_size), torch.ones(BATCH, KEYPOINTS)
    maps = check_encoding(representation, keypoints, visible)
    benchmark(representation.encode, keypoints, visible)
    report(benchmark, f"encode {encoding} {input_size}", lambda: representation.encode(keypoints, visible),
           lambda: reference_encode(representation, keypoints.numpy()), lambda: torch.ones(maps.shape))


@RES
@pytest.mark.parametrize("decoder", ["argmax", "quarter_offset", "dark", "udp_dark"])
def test_decode(benchmark, input_size, decoder):
    representation = build_representation("heatmap", input_size, KEYPOINTS, decoder=decoder)
    maps = noisy_ideal_maps(representation, uniform_keypoints(input_size))
    check_decoding(representation, maps)
    benchmark(representation.decode, maps)
    report(benchmark, f"decode {decoder} {input_size}", lambda: representation.decode(maps),
           lambda: reference_decode(representation, maps.numpy()), lambda: maps.amax(dim=(-2, -1)))
