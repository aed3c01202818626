"""NerPE decoding cost: standard (dense U = 32 map) against progressive (NerPE-p, ours), B = 32 images, K = 17.

Times come from pytest-benchmark; the per-image work (query points, MLP evaluations, multiply-accumulates of
the paper's MLP, levels) goes to ``extra_info``. A randomly initialised MLP on random cell features: the cost
does not depend on the weights. Standard decoding is heavy on CPU (about 0.9 TMAC for a batch at 256x192), so
it runs one round and progressive three.

    python -m pytest benchmarks/test_nerpe_decoding.py --benchmark-enable -p no:cacheprovider
"""
from __future__ import annotations

import pytest
import torch

from heatbench import build_representation
from heatbench.representations.nerpe import LearnedField

BATCH, KEYPOINTS = 32, 17


@pytest.mark.parametrize("decoding", ["standard", "progressive"])
@pytest.mark.parametrize("size", [(64, 64), (256, 192)], ids=["64x64", "256x192"])
def test_decoding(benchmark, size, decoding):
    rep = build_representation("nerpe", size, KEYPOINTS, decoding=decoding)
    torch.manual_seed(0)
    mlp = rep.build_head(256, 4).mlp.eval()
    field = LearnedField(torch.randn(BATCH, rep.config.channels, *rep.grid), mlp, rep.config.local_ensemble)
    benchmark.extra_info.update(rep.decode_cost(), batch=BATCH, keypoints=KEYPOINTS, per="image")
    coords, scores = benchmark.pedantic(rep.decode, args=(field,), rounds=1 if decoding == "standard" else 3,
                                        iterations=1)
    assert coords.shape == (BATCH, KEYPOINTS, 2) and torch.isfinite(scores).all()
