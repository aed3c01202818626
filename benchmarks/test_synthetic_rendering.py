"""Rendering throughput of the synthetic data set, in images per second, at 64x64 and 256x192.

Each round fetches one training batch of B = 16 the way the data loader does (``TopDownDataset.__getitems__``
with the default augmentation: the crop's geometry, the scenes drawn from their indices, the batched render and
the ImageNet normalisation), so the figure is what training waits for per batch; the batch advances through the
split, so that no round repeats another's scenes. ``images_per_s`` in ``extra_info`` is B over the median
round. On the CPU the renderer uses torch's intra-op threads; on CUDA it renders on the GPU.

Training renders each batch in the training process, before its step (``TrainConfig.num_workers`` = 0), so what a
run waits on is the render's share of a step: ``test_render_share_of_train_step`` fetches a batch and takes
one heatmap training step at 64x64 (as cheap a step as any built-in's) in alternation, in one run, and
records the median fetch over the median step.

    python -m pytest benchmarks/test_synthetic_rendering.py --benchmark-enable -s -p no:cacheprovider
"""
from __future__ import annotations

import itertools
import math
import statistics
import time

import pytest
import torch

from heatbench import build_representation
from heatbench.data import TopDownDataset
from heatbench.data.synthetic import SyntheticConfig, load_synthetic
from heatbench.optim import adam, train_step
from heatbench.train import TrainConfig, build_model

BATCH = 16
SIZES = {"64x64": (64, 64), "256x192": (256, 192)}
ROUNDS = {"64x64": 20, "256x192": 5}
SHARE_ALTERNATIONS = 12
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _fetcher(input_size: tuple[int, int]):
    """A call that renders the next augmented training batch of B and collates it, as the training loader does."""
    data = TopDownDataset(load_synthetic(SyntheticConfig(train=BATCH * 32), "train"), input_size, train=True,
                          device=DEVICE)
    batches = itertools.cycle(range(0, len(data), BATCH))

    def fetch():
        start = next(batches)
        batch = torch.utils.data.default_collate(data.__getitems__(list(range(start, start + BATCH))))
        if batch.image.is_cuda:
            torch.cuda.synchronize()
        return batch

    return fetch


@pytest.mark.parametrize("size", SIZES)
def test_render_training_batch(benchmark, size):
    fetch_batch = _fetcher(SIZES[size])

    def fetch():
        return fetch_batch().image

    fetch()  # warm-up: first allocations
    images = benchmark.pedantic(fetch, rounds=ROUNDS[size], iterations=1)
    assert images.shape == (BATCH, 3, *SIZES[size])
    images_per_s = BATCH / benchmark.stats.stats.median if benchmark.stats else float("nan")
    benchmark.extra_info.update(batch=BATCH, device=DEVICE, threads=torch.get_num_threads(),
                                images_per_s=round(images_per_s, 1))
    print(f"\n{size}: {images_per_s:.0f} images/s on {DEVICE} ({torch.get_num_threads()} threads), batch {BATCH}")


def test_render_share_of_train_step(benchmark):
    """Render time per training batch over one heatmap train step at 64x64 and B, alternated in one run so
    that the machine's drift falls on both alike; in ``extra_info["render_vs_train_step"]``."""
    fetch = _fetcher(SIZES["64x64"])
    batch = fetch()
    representation = build_representation("heatmap", SIZES["64x64"], batch.keypoints.shape[1])
    torch.manual_seed(0)
    model = build_model(representation, TrainConfig(batch_size=BATCH)).to(DEVICE).train()
    optimizer = adam(model.parameters(), 1e-3)

    def step(batch) -> float:
        return train_step(representation, model, optimizer, batch.image, batch.keypoints, batch.visible,
                          torch.float32).item()  # .item() waits for the device

    times = {"render": [], "step": []}
    for _ in range(SHARE_ALTERNATIONS):
        started = time.perf_counter()
        batch = fetch()
        rendered = time.perf_counter()
        step(batch)
        times["render"].append(rendered - started)
        times["step"].append(time.perf_counter() - rendered)
    ratio = statistics.median(times["render"][2:]) / statistics.median(times["step"][2:])  # after 2 warm-ups
    benchmark.extra_info.update(batch=BATCH, device=DEVICE, threads=torch.get_num_threads(),
                                render_vs_train_step=round(ratio, 3))
    print(f"\n64x64: rendering a batch of {BATCH} takes {ratio:.2f} of a heatmap train step on {DEVICE} "
          f"({torch.get_num_threads()} threads)")
    loss = benchmark.pedantic(step, args=(batch,), rounds=3, warmup_rounds=0, iterations=1)
    assert math.isfinite(loss)
