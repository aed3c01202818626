"""Every registered representation's share of training and inference, timed piece by piece on the CPU.

For each representation at 64x64 and 256x192, batch B = 8 (the train step: the batch ``run`` trains with),
K = 17, four benchmarks, so that a regression shows as a ratio against a stored baseline:

- ``encode``: (B, K, 2) keypoints -> training targets;
- ``loss_backward``: head forward on fixed (B, 256, H/4, W/4) backbone features, loss, backward (the loss of
  some representations queries the head, as NerPE's does, so loss and head cannot be timed apart);
- ``decode``: the head's outputs -> (B, K, 2) keypoints, in eval and inference mode;
- ``train_step``: one full step of the model ``run`` trains (ResNet-18, neck and head) at
  ``TrainConfig.batch_size``: encode, forward, loss, backward, Adam: ``heatbench.optim.train_step``, as ``run`` trains.

and, for the heatmap, SimCC and NerPE, two ratios of a train step to another stepped in alternation: at 32x32
and 64x64, against the same step with the 1x1 and 2x2 maps of C5 and the neck convolved by oneDNN instead of
as one matrix product (``heatbench.models.resnet.SmallMapConv2d`` and ``SmallMapConvTranspose2d``); at 64x64,
in bf16 autocast against float32.

Weights and inputs are random and seeded; no cost measured here depends on their values. The first three
are calibrated by pytest-benchmark (at least 5 rounds); the train step runs a fixed number of rounds after
one warm-up round that also allocates Adam's state, 2 at 256x192, where a step takes seconds on 2 cores.

    python -m pytest benchmarks/test_train_step.py --benchmark-enable --benchmark-autosave -p no:cacheprovider
    python -m pytest benchmarks/test_train_step.py --benchmark-enable --benchmark-compare \
        --benchmark-compare-fail=median:25% -p no:cacheprovider
"""
from __future__ import annotations

import statistics
import time

import pytest
import torch

from heatbench import available_representations, build_representation
from heatbench.models import resnet
from heatbench.models.resnet import SMALL_MAP_POSITIONS
from heatbench.optim import adam, train_step
from heatbench.train import TrainConfig, build_model, cpu_has_bf16

BATCH, KEYPOINTS, FEATURES, STRIDE = 8, 17, 256, 4  # FEATURES and STRIDE: the shared backbone's neck output
SIZES = {"64x64": (64, 64), "256x192": (256, 192)}
TRAIN_ROUNDS = {"64x64": 5, "256x192": 2}

parametrize_cases = pytest.mark.parametrize(
    ("name", "size"), [(name, size) for name in available_representations() for size in SIZES])


def _case(name: str, size: str):
    """(representation, head, features (B, 256, H/4, W/4), keypoints (B, K, 2) in the input, visible (B, K))."""
    representation = build_representation(name, SIZES[size], KEYPOINTS)
    height, width = SIZES[size]
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)  # the head's initialisation draws from the global generator
    head = representation.build_head(FEATURES, STRIDE)
    features = torch.randn(BATCH, FEATURES, height // STRIDE, width // STRIDE, generator=generator)
    keypoints = torch.rand(BATCH, KEYPOINTS, 2, generator=generator) * torch.tensor([width, height])
    return representation, head, features, keypoints, torch.ones(BATCH, KEYPOINTS)


@parametrize_cases
def test_encode(benchmark, name, size):
    representation, _, _, keypoints, visible = _case(name, size)
    benchmark.extra_info.update(batch=BATCH, keypoints=KEYPOINTS)
    benchmark(representation.encode, keypoints, visible)


@parametrize_cases
def test_loss_backward(benchmark, name, size):
    representation, head, features, keypoints, visible = _case(name, size)
    targets = representation.encode(keypoints, visible)
    head.train()

    def loss_backward() -> torch.Tensor:
        head.zero_grad(set_to_none=True)
        loss = representation.loss(head(features), targets)
        loss.backward()
        return loss

    benchmark.extra_info.update(batch=BATCH, keypoints=KEYPOINTS)
    assert torch.isfinite(benchmark(loss_backward))


@parametrize_cases
def test_decode(benchmark, name, size):
    representation, head, features, _, _ = _case(name, size)
    with torch.inference_mode():
        outputs = head.eval()(features)
        benchmark.extra_info.update(batch=BATCH, keypoints=KEYPOINTS)
        coords, _ = benchmark(representation.decode, outputs)
    assert coords.shape == (BATCH, KEYPOINTS, 2)


def _train_step(name: str, height: int, width: int, dtype: torch.dtype = torch.float32):
    """One training step of ``run``'s model (a fresh one, seeded) at ``TrainConfig.batch_size``: encode, forward
    under ``dtype`` autocast, loss, backward, Adam; returns the loss."""
    config = TrainConfig()
    representation = build_representation(name, (height, width), KEYPOINTS)
    generator = torch.Generator().manual_seed(0)
    keypoints = torch.rand(config.batch_size, KEYPOINTS, 2, generator=generator) * torch.tensor([width, height])
    visible = torch.ones(config.batch_size, KEYPOINTS)
    images = torch.randn(config.batch_size, 3, height, width, generator=generator)
    torch.manual_seed(0)
    model = build_model(representation, config).train()
    optimizer = adam(model.parameters(), 1e-3)
    return lambda: train_step(representation, model, optimizer, images, keypoints, visible, dtype)


@parametrize_cases
def test_train_step(benchmark, name, size):
    step = _train_step(name, *SIZES[size])
    benchmark.extra_info.update(batch=TrainConfig().batch_size, keypoints=KEYPOINTS, backbone="resnet18")
    loss = benchmark.pedantic(step, rounds=TRAIN_ROUNDS[size], warmup_rounds=1, iterations=1)
    assert torch.isfinite(loss)


SMALL_MAP_SIZES = {"32x32": (32, 32), "64x64": (64, 64)}  # C5 is 1x1 and 2x2
ALTERNATIONS, WARM_UPS = 12, 2


def _median_time_ratio(step, baseline) -> float:
    """The median time of ``step`` over that of ``baseline``, two steps stepped in alternation in this run, so
    that the machine's drift falls on both alike; the first WARM_UPS of each are left out."""
    times = {step: [], baseline: []}
    for _ in range(ALTERNATIONS):
        for each in times:
            started = time.perf_counter()
            each()
            times[each].append(time.perf_counter() - started)
    return statistics.median(times[step][WARM_UPS:]) / statistics.median(times[baseline][WARM_UPS:])


@pytest.mark.parametrize("name", ["heatmap", "simcc", "nerpe"])
@pytest.mark.parametrize("size", SMALL_MAP_SIZES)
def test_train_step_with_small_maps_as_one_matrix_product(benchmark, monkeypatch, name, size):
    """The train step with its small maps convolved as one matrix product (``SmallMapConv2d``, timed), and its
    median time over the same step through oneDNN's convolution (``SMALL_MAP_POSITIONS = 0``) in
    ``extra_info["time_vs_onednn"]``: two models from one seed (``_median_time_ratio``)."""
    def path(positions: int):
        step = _train_step(name, *SMALL_MAP_SIZES[size])

        def step_with_small_maps_up_to_positions():
            monkeypatch.setattr(resnet, "SMALL_MAP_POSITIONS", positions)
            return step()
        return step_with_small_maps_up_to_positions

    matmul = path(SMALL_MAP_POSITIONS)
    ratio = _median_time_ratio(matmul, path(0))
    monkeypatch.setattr(resnet, "SMALL_MAP_POSITIONS", SMALL_MAP_POSITIONS)
    benchmark.extra_info.update(batch=TrainConfig().batch_size, time_vs_onednn=ratio)
    print(f"\n{name} {size}: train step with small maps as one matrix product / through oneDNN = {ratio:.2f}")
    assert torch.isfinite(benchmark.pedantic(matmul, rounds=3, warmup_rounds=0, iterations=1))


@pytest.mark.parametrize("name", ["heatmap", "simcc", "nerpe"])
def test_train_step_in_bf16_autocast(benchmark, name):
    """The 64x64 train step under bf16 autocast (timed), and its median time over the same step in float32 in
    ``extra_info["time_vs_float32"]``: two models from one seed (``_median_time_ratio``). ``--precision auto``
    trains in bf16 where the CPU has bf16 units; where it has none, bf16 is emulated and this ratio says what
    that would cost."""
    bf16 = _train_step(name, 64, 64, torch.bfloat16)
    ratio = _median_time_ratio(bf16, _train_step(name, 64, 64))
    benchmark.extra_info.update(batch=TrainConfig().batch_size, time_vs_float32=ratio, cpu_has_bf16=cpu_has_bf16())
    print(f"\n{name} 64x64: train step in bf16 autocast / in float32 = {ratio:.2f}")
    assert torch.isfinite(benchmark.pedantic(bf16, rounds=3, warmup_rounds=0, iterations=1))
