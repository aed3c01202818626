"""Rendering throughput of the synthetic data set, in images per second, at 64x64 and 256x192.

Each round fetches one training batch of B = 16 the way the data loader does (``TopDownDataset.__getitems__``
with the default augmentation: the crop's geometry, the scenes drawn from their indices, the batched render and
the ImageNet normalisation), so the figure is what training waits for per batch; the batch advances through the
split, so that no round repeats another's scenes. ``images_per_s`` in ``extra_info`` is B over the median
round. On the CPU the renderer uses torch's intra-op threads; on CUDA it renders on the GPU.

    python -m pytest benchmarks/test_synthetic_rendering.py --benchmark-enable -s -p no:cacheprovider
"""
from __future__ import annotations

import itertools

import pytest
import torch

from heatbench.data import TopDownDataset
from heatbench.data.synthetic import SyntheticConfig, load_synthetic

BATCH = 16
SIZES = {"64x64": (64, 64), "256x192": (256, 192)}
ROUNDS = {"64x64": 20, "256x192": 5}


@pytest.mark.parametrize("size", SIZES)
def test_render_training_batch(benchmark, size):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    data = TopDownDataset(load_synthetic(SyntheticConfig(train=BATCH * 32), "train"), SIZES[size], train=True,
                          device=device)
    batches = itertools.cycle(range(0, len(data), BATCH))

    def fetch():
        start = next(batches)
        images = data.__getitems__(list(range(start, start + BATCH)))[0].image
        if images.is_cuda:
            torch.cuda.synchronize()
        return images

    fetch()  # warm-up: first allocations
    image = benchmark.pedantic(fetch, rounds=ROUNDS[size], iterations=1)
    assert image.shape == (3, *SIZES[size])
    images_per_s = BATCH / benchmark.stats.stats.median if benchmark.stats else float("nan")
    benchmark.extra_info.update(batch=BATCH, device=device, threads=torch.get_num_threads(),
                                images_per_s=round(images_per_s, 1))
    print(f"\n{size}: {images_per_s:.0f} images/s on {device} ({torch.get_num_threads()} threads), batch {BATCH}")
