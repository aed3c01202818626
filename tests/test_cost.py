"""Cost measurement: FLOP counts are exact, timings are summarised as stated, and the bundled measurements
work for any representation through the base-class contract alone."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from heatbench import cost, ops, registry
from heatbench.models.pose_model import PoseModel
from heatbench.representation import Representation, build_representation

DUMMY_NAME = "test-argmax-heatmap"


@dataclasses.dataclass(frozen=True)
class ArgmaxHeatmapConfig:
    sigma: float = 1.0  # Gaussian std in heatmap cells


class ArgmaxHeatmap(Representation):
    """The smallest complete representation: a 1x1-conv Gaussian heatmap at stride 4, decoded by argmax.

    Assumes the backbone's stride 4. The floor is half a 4-px cell per axis: argmax lands on the nearest
    cell centre, so the error is at most sqrt(2^2 + 2^2) = 2 * sqrt(2) px.
    """

    config_class = ArgmaxHeatmapConfig
    floor_tolerance_px = 2 * math.sqrt(2)
    stride = 4

    def output_size(self):
        return self.input_size[0] // self.stride, self.input_size[1] // self.stride

    def build_head(self, in_channels, in_stride):
        return nn.Conv2d(in_channels, self.num_keypoints, 1)

    def encode(self, keypoints, visible):
        keypoints, weight = ops.sanitize_keypoints(keypoints, visible)
        height, width = self.output_size()
        xs = ops.cell_centres(width, keypoints.device, keypoints.dtype) * self.stride  # (W,) input px
        ys = ops.cell_centres(height, keypoints.device, keypoints.dtype) * self.stride  # (H,)
        dx2 = ((xs - keypoints[..., :1]) / self.stride) ** 2  # (B, K, W) in cells^2
        dy2 = ((ys - keypoints[..., 1:]) / self.stride) ** 2  # (B, K, H)
        return ops.gaussian(dy2[..., :, None] + dx2[..., None, :], self.config.sigma), weight  # (B, K, H, W)

    def loss(self, outputs, targets):
        heatmaps, weight = targets
        return ((outputs - heatmaps) ** 2 * weight[..., None, None]).mean()

    def decode(self, outputs):
        width = outputs.shape[-1]
        scores, index = outputs.flatten(2).max(dim=-1)  # (B, K)
        x = (index % width).to(outputs.dtype) + 0.5
        y = torch.div(index, width, rounding_mode="floor").to(outputs.dtype) + 0.5
        return torch.stack([x, y], dim=-1) * self.stride, scores

    def flip_back(self, outputs, flip_pairs):
        return outputs.flip(-1)[:, ops.flip_permutation(self.num_keypoints, flip_pairs, outputs.device)]

    def ideal_outputs(self, keypoints, visible):
        return self.encode(keypoints, visible)[0]


@pytest.fixture
def dummy():
    registry.register(DUMMY_NAME, ArgmaxHeatmap, origin="tests/test_cost.py")
    try:
        yield build_representation(DUMMY_NAME, (64, 64), num_keypoints=3)
    finally:  # other tests iterate over available(); the dummy must not leak into them
        registry.unregister(DUMMY_NAME)


FEATURES = 16
PEAK_SENTINEL = 123_456_789  # what a stubbed peak_memory reports, so the row must carry exactly it


class PatchBackbone(nn.Module):
    """A stand-in for the ResNet: one 4x4 stride-4 convolution, so costs are small and known exactly."""

    out_channels = FEATURES
    stride = 4

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, FEATURES, 4, stride=4)

    def forward(self, images):
        return self.conv(images)


def small_model(representation: Representation) -> PoseModel:
    torch.manual_seed(0)
    backbone = PatchBackbone()
    return PoseModel(backbone, representation.build_head(backbone.out_channels, backbone.stride))


# Per 64x64 image: 16x16 output pixels, each a 3*4*4 -> 16 patch convolution, then the 16 -> 3 1x1 head;
# 2 FLOPs per multiply-accumulate, biases and the argmax decode uncounted.
FORWARD_GFLOPS = 2 * (3 * 4 * 4 * FEATURES + FEATURES * 3) * 16 * 16 / 1e9


def test_flop_count_of_a_linear_layer_is_exact():
    batch, features_in, features_out = 5, 7, 3
    layer = nn.Linear(features_in, features_out)
    x = torch.randn(batch, features_in)
    # 2 FLOPs per multiply-accumulate, bias additions not counted: 2 * in * out per image, with no rounding
    # beyond the float division by 1e9.
    expected = 2 * features_in * features_out / 1e9
    assert cost.flops_per_image(lambda: layer(x), batch) == pytest.approx(expected, rel=1e-12)


def test_transposed_convolutions_are_counted():
    # The neck is made of them: each input pixel is multiplied by every (in, out, k, k) weight once.
    deconv = nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1, bias=False)
    x = torch.randn(2, 8, 5, 5)
    assert cost.flops_per_image(lambda: deconv(x), 2) == pytest.approx(2 * 8 * 4 * 4 * 4 * 5 * 5 / 1e9, rel=1e-12)


def test_latency_reports_median_and_spread(monkeypatch):
    # A fake clock makes the timings exact: each call advances it by a scripted duration.
    clock = [0.0]
    durations = iter([100.0, 100.0, 100.0] + [5.0, 1.0, 3.0, 2.0, 4.0])  # 3 warmup calls, then 5 timed

    def fn():
        clock[0] += next(durations)

    monkeypatch.setattr(cost.time, "perf_counter", lambda: clock[0])
    result = cost.latency(fn, "cpu", warmup=3, repeats=5)
    # Timed runs sorted: 1, 2, 3, 4, 5 -> median 3, inclusive quartiles 2 and 4 -> IQR 2; the slow warmup
    # calls are not in the summary.
    assert result == {"median_s": 3.0, "spread_s": 2.0, "runs": 5}


def test_cpu_peak_memory_sees_a_short_lived_tensor():
    size = 200 * 2**20

    def allocate():
        block = torch.ones(size // 4)  # ones touches every page, so it is resident
        cost.time.sleep(0.1)  # 100 sampling intervals: the sampler cannot miss it
        return block.sum()

    peak = cost.peak_memory(allocate, "cpu")
    # RSS is counted in pages; the tensor is the only large allocation, so the peak is the tensor plus
    # interpreter noise (a few MB), and the tensor is freed before fn returns, which a before/after delta
    # would miss.
    assert 0.95 * size <= peak <= 1.25 * size


def test_peak_memory_without_proc_uses_max_rss_growth(monkeypatch, tmp_path):
    monkeypatch.setattr(cost, "_STATM", tmp_path / "no-statm")
    resident = int(open("/proc/self/statm").read().split()[1]) * cost.os.sysconf("SC_PAGE_SIZE")
    headroom = cost._max_rss_bytes() - resident  # ru_maxrss only grows past its previous peak
    size = headroom + 64 * 2**20
    if size > 2**30:
        pytest.skip("this process already peaked over 1 GiB above its resident size")
    peak = cost.peak_memory(lambda: torch.ones(size // 4).sum(), "cpu")
    # The growth past the old peak is the 64 MiB beyond the headroom, less interpreter noise.
    assert peak >= 48 * 2**20


def test_parameter_counts_split_head_and_total(dummy):
    model = small_model(dummy)
    head = FEATURES * 3 + 3
    assert cost.parameter_counts(model) == {"head_params": head, "total_params": 3 * 4 * 4 * FEATURES + FEATURES + head}


def test_measure_inference_counts_forward_and_decode(dummy, monkeypatch):
    monkeypatch.setattr(cost, "peak_memory", lambda fn, device: (fn(), PEAK_SENTINEL)[1])
    model = small_model(dummy).train()
    result = cost.measure_inference(dummy, model, (64, 64), "cpu", batch=2, warmup=1, repeats=2)
    assert set(result) == {
        "gflops_per_image", "latency_ms_per_image", "latency_spread_ms_per_image",
        "throughput_images_per_s", "peak_memory_bytes", "batch",
    }
    assert result["gflops_per_image"] == pytest.approx(FORWARD_GFLOPS, rel=1e-12)  # float division only
    assert result["latency_ms_per_image"] > 0 and result["latency_spread_ms_per_image"] >= 0
    assert result["throughput_images_per_s"] == pytest.approx(1e3 / result["latency_ms_per_image"])
    assert result["peak_memory_bytes"] == PEAK_SENTINEL and result["batch"] == 2  # the measured call's peak
    assert model.training  # restored after the eval-mode measurement


def test_measure_train_step_trains_the_throwaway_model(dummy, monkeypatch):
    monkeypatch.setattr(cost, "peak_memory", lambda fn, device: (fn(), PEAK_SENTINEL)[1])
    model = small_model(dummy)
    before = model.head.weight.detach().clone()
    result = cost.measure_train_step(dummy, model, (64, 64), "cpu", batch=2, warmup=1, repeats=2)
    assert set(result) == {
        "train_gflops_per_image", "step_time_s", "step_time_spread_s", "train_images_per_s",
        "peak_memory_bytes", "batch",
    }
    # This representation's encode and loss are elementwise, so the training count is the forward's.
    assert result["train_gflops_per_image"] == pytest.approx(FORWARD_GFLOPS, rel=1e-12)
    assert result["step_time_s"] > 0 and result["train_images_per_s"] == pytest.approx(2 / result["step_time_s"])
    assert result["peak_memory_bytes"] == PEAK_SENTINEL and result["batch"] == 2
    assert not torch.equal(model.head.weight, before)  # the Adam steps ran
