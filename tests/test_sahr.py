"""Specification of the SAHR / WAHR representation (heatbench/representations/sahr.py)."""
import itertools
import math

import pytest
import torch
from torch import nn

from heatbench.coords import flip_horizontal
from heatbench.ops import flip_permutation
from heatbench.representation import build_representation
from heatbench.representations.sahr import SAHR, SAHRConfig, SAHROutputs
from tests.fitting import adam_losses

K = 5
FLIP_PAIRS = [(1, 2), (3, 4)]
SIZES = [(64, 64), (128, 128), (256, 192)]
ENCODINGS = ["msra", "unbiased"]
DECODERS = ["argmax", "quarter_offset", "dark"]
FLAGS = list(itertools.product([True, False], repeat=2))  # (scale_adaptive, weight_adaptive)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Every tensor here is small: on a busy 2-core machine OpenMP's spinning threads made the depthwise
    convolution's backward several times slower than one thread. Restored for the other test files."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make(input_size, **overrides) -> SAHR:
    """SAHR on the code's MSRA Gaussian unless ``overrides`` says otherwise (the default is the unbiased one)."""
    return build_representation("sahr", input_size, K, **{"encoding": "msra", **overrides})


def interior_keypoints(rep: SAHR, batch=64, seed=0):
    """(batch, K, 2) sub-pixel keypoints at least 3 sigma + 1 cells from every edge: there the Gaussian and
    DARK's blur are not cut by the border, which is what 'interior' means for a heatmap's floor."""
    height, width = rep.input_size
    margin = (3 * rep.config.sigma + 1) * rep.config.stride
    unit = torch.rand(batch, K, 2, generator=torch.Generator().manual_seed(seed))
    return margin + unit * torch.tensor([width - 2 * margin, height - 2 * margin])


def flipped_keypoints(keypoints, width):
    return flip_horizontal(keypoints, width)[:, flip_permutation(K, FLIP_PAIRS)]


def random_outputs(rep: SAHR, batch, seed, alpha_scale=0.3) -> SAHROutputs:
    generator = torch.Generator().manual_seed(seed)
    height, width = rep.output_size()
    heatmaps = torch.rand(batch, K, height, width, generator=generator)
    alpha = alpha_scale * torch.randn(batch, K, height, width, generator=generator)
    return SAHROutputs(heatmaps, alpha if rep.config.scale_adaptive else None)


# --- configuration and head ------------------------------------------------------------------------------


@pytest.mark.parametrize("input_size, sigma", [((64, 64), 1.0), ((128, 128), 1.0), ((256, 192), 2.0)])
def test_default_config_is_sahr_plus_wahr_on_the_heatmaps_default_encoding_and_sigma(input_size, sigma):
    # the heatmap baseline's unbiased Gaussian and DARK, so that SAHR against heatmap measures the adaptation
    assert SAHR.default_config(input_size) == SAHRConfig(
        scale_adaptive=True, weight_adaptive=True, encoding="unbiased", decoder="dark", sigma=sigma, gamma=0.01,
        reg_weight=1.0)
    heatmap = build_representation("heatmap", input_size, K).config
    assert (heatmap.encoding, heatmap.decoder, heatmap.sigma) == ("unbiased", "dark", sigma)


@pytest.mark.parametrize("field, value", [
    ("scale_adaptive", "yes"), ("weight_adaptive", 1), ("encoding", "udp"), ("decoder", "udp_dark"),
    ("sigma", 0.5), ("sigma", "2"), ("stride", 0), ("gamma", 0.0), ("reg_weight", -1.0),
])
def test_invalid_config_field_is_rejected_by_name(field, value):
    with pytest.raises(ValueError, match=field):
        SAHRConfig(**{field: value})


def test_alpha_branch_is_the_papers_and_starts_at_zero():
    rep = make((64, 48))
    head = rep.build_head(in_channels=8, in_stride=4)
    conv, norm, relu, depthwise = head.alpha_branch
    assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (8, K, (1, 1))
    assert isinstance(norm, nn.BatchNorm2d) and isinstance(relu, nn.ReLU)
    assert (depthwise.kernel_size, depthwise.padding, depthwise.groups) == ((9, 9), (4, 4), K)
    outputs = head(torch.randn(3, 8, 16, 12))
    assert outputs.heatmaps.shape == (3, K, 16, 12) and outputs.alpha.shape == (3, K, 16, 12)
    assert torch.equal(outputs.alpha, torch.zeros_like(outputs.alpha))  # the code zero-initialises the last conv


def test_without_scale_adaptation_there_is_no_alpha_branch_and_no_alpha():
    rep = make((64, 64), scale_adaptive=False)
    head = rep.build_head(in_channels=8, in_stride=4)
    assert head.alpha_branch is None
    outputs = head(torch.randn(2, 8, 16, 16))
    assert outputs.alpha is None
    keypoints = interior_keypoints(rep, batch=2)
    ideal = rep.ideal_outputs(keypoints, torch.ones(2, K))
    assert ideal.alpha is None and rep.flip_back(ideal, FLIP_PAIRS).alpha is None


def test_head_needs_features_at_the_configured_stride():
    with pytest.raises(ValueError, match="stride"):
        make((64, 64)).build_head(in_channels=8, in_stride=8)


# --- round trip and flip ---------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("input_size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_ideal_outputs_decode_within_the_stated_tolerance(encoding, decoder, input_size):
    rep = make(input_size, encoding=encoding, decoder=decoder)
    keypoints = interior_keypoints(rep, batch=128, seed=1)
    decoded, _ = rep.decode(rep.ideal_outputs(keypoints, torch.ones(128, K)))
    assert (decoded - keypoints).norm(dim=-1).max() <= rep.floor_tolerance_px


@pytest.mark.parametrize("scale_adaptive, weight_adaptive", FLAGS)
def test_the_flags_do_not_change_the_ideal_decode(scale_adaptive, weight_adaptive):
    reference = make((128, 128), encoding="unbiased")
    rep = make((128, 128), encoding="unbiased", scale_adaptive=scale_adaptive, weight_adaptive=weight_adaptive)
    keypoints = interior_keypoints(rep, batch=16, seed=2)
    decoded, scores = rep.decode(rep.ideal_outputs(keypoints, torch.ones(16, K)))
    expected, expected_scores = reference.decode(reference.ideal_outputs(keypoints, torch.ones(16, K)))
    assert torch.equal(decoded, expected) and torch.equal(scores, expected_scores)


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("input_size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_flip_back_of_the_mirrored_ideal_outputs_is_exact(encoding, input_size):
    rep = make(input_size, encoding=encoding)
    width = input_size[1]
    keypoints = interior_keypoints(rep, batch=32, seed=3)
    visible = torch.ones(32, K)
    ideal = rep.ideal_outputs(keypoints, visible)
    flipped_back = rep.flip_back(rep.ideal_outputs(flipped_keypoints(keypoints, width), visible), FLIP_PAIRS)
    # The column reversal is exact: the mirrored maps equal the plain ones up to float32 rounding of the
    # Gaussian's argument (random float keypoints never sit on an MSRA rounding tie).
    assert torch.allclose(flipped_back.heatmaps, ideal.heatmaps, atol=1e-6)
    assert torch.equal(flipped_back.alpha, ideal.alpha)
    plain, _ = rep.decode(ideal)
    merged, _ = rep.decode(rep.merge_flipped(ideal, flipped_back))
    # DARK's Newton step on maps equal to 1e-6: 1e-4 px
    assert (merged - plain).norm(dim=-1).max() <= 1e-4


def test_msra_rounding_tie_flip_merge_stays_within_the_floor():
    # x on a multiple of the stride is an MSRA rounding tie: the mirrored map peaks one cell to the left, so
    # the flip merge cannot equal the plain decode; with DARK it lands near the keypoint itself.
    rep = make((64, 64))
    keypoints = torch.full((1, K, 2), 32.0)
    visible = torch.ones(1, K)
    ideal = rep.ideal_outputs(keypoints, visible)
    flipped_back = rep.flip_back(rep.ideal_outputs(flipped_keypoints(keypoints, 64), visible), FLIP_PAIRS)
    merged, _ = rep.decode(rep.merge_flipped(ideal, flipped_back))
    plain, _ = rep.decode(ideal)
    assert torch.allclose(plain[..., 0], torch.tensor(34.0))  # the cell [32, 36), centred at 34
    # The merge, two Gaussians one cell apart, is not log-quadratic, so DARK misses its midpoint x = 32 by
    # 0.04 px (measured); 0.1 px bounds it, far inside the floor.
    assert (merged[..., 0] - 32.0).abs().max() <= 0.1


# --- loss ------------------------------------------------------------------------------------------------


def _swahr_code_loss(outputs: SAHROutputs, targets) -> torch.Tensor:
    """greatlog/SWAHR-HumanPose lib/core/loss.py (HeatmapLoss + ScaleLoss, weight 1 each) as written there,
    with the bottom-up mask M replaced by the keypoint weight, halved as the module docstring states."""
    gt, pred = targets.heatmaps, outputs.heatmaps
    mask = targets.weight[..., None, None].expand_as(gt)
    scale = outputs.alpha * (gt > 0).float()
    dis = torch.log(torch.where(gt > 0, gt, gt + 1))
    scaled_gt = gt + gt * dis * scale + 0.5 * gt * dis**2 * scale**2
    weight = torch.abs(1 - pred) * gt**0.01 + torch.abs(pred) * (1 - gt**0.01)
    heatmap_loss = ((pred - scaled_gt) ** 2 * weight * mask).mean()
    scale_loss = (scale**2 * mask).mean()
    return 0.5 * (heatmap_loss + scale_loss)


def test_loss_is_the_swahr_code_with_target_weights():
    # msra: the code's mask H > 0 is our 3-sigma window; |alpha| < 0.9 keeps the clamp inactive.
    rep = make((64, 64))
    keypoints = interior_keypoints(rep, batch=3, seed=4)
    visible = torch.ones(3, K)
    visible[1, 2] = 0
    targets = rep.encode(keypoints, visible)
    outputs = random_outputs(rep, batch=3, seed=5, alpha_scale=0.2)
    outputs = SAHROutputs(outputs.heatmaps.requires_grad_(), outputs.alpha.clamp(-0.85, 0.95).requires_grad_())
    ours = rep.loss(outputs, targets)
    theirs = _swahr_code_loss(outputs, targets)
    grads = torch.autograd.grad(ours, outputs)
    expected_grads = torch.autograd.grad(theirs, outputs)
    # float32 means over 1280 terms, summed in different orders: 1e-6 relative, 1e-9 absolute on gradients
    assert torch.allclose(ours, theirs, rtol=1e-6)
    assert all(torch.allclose(g, e, rtol=1e-5, atol=1e-9) for g, e in zip(grads, expected_grads))


def test_with_both_flags_off_the_loss_is_joints_mse_loss():
    rep = make((64, 64), scale_adaptive=False, weight_adaptive=False, encoding="unbiased")
    keypoints = interior_keypoints(rep, batch=2, seed=6)
    visible = torch.tensor([[1.0, 1, 0, 1, 1], [1, 1, 1, 1, 1]])
    targets = rep.encode(keypoints, visible)
    outputs = random_outputs(rep, batch=2, seed=7)
    w = targets.weight[..., None, None]
    expected = 0.5 * ((outputs.heatmaps * w - targets.heatmaps * w) ** 2).mean()
    assert torch.equal(rep.loss(outputs, targets), expected)


def test_taylor_target_approaches_the_power_law_for_small_alpha():
    # With P = H^(1 + a) on the window and a constant a, what remains is the Taylor remainder O(a^3 ln^3 H) H
    # plus the regulariser ½ a^2 mean(w 1[S]); at a = 0.05 the remainder is below 1e-6 per pixel squared.
    rep = make((64, 64), weight_adaptive=False)
    keypoints = interior_keypoints(rep, batch=2, seed=8)
    targets = rep.encode(keypoints, torch.ones(2, K))
    a = 0.05
    alpha = torch.full_like(targets.heatmaps, a)
    loss = rep.loss(SAHROutputs(targets.heatmaps ** (1 + a), alpha), targets)
    regulariser = 0.5 * a**2 * targets.support.mean()
    assert 0 <= loss - regulariser < 1e-6


def test_alpha_is_clamped_in_the_target_but_regularised_unclamped():
    rep = make((64, 64), weight_adaptive=False)
    keypoints = interior_keypoints(rep, batch=2, seed=9)
    targets = rep.encode(keypoints, torch.ones(2, K))
    heatmap = targets.heatmaps
    log_h = torch.where(heatmap > 0, heatmap.log(), torch.zeros_like(heatmap))
    clamped_target = heatmap * (1 + log_h + 0.5 * log_h**2)  # alpha = 5 clamps to 1
    alpha = torch.full_like(heatmap, 5.0, requires_grad=True)
    loss = rep.loss(SAHROutputs(clamped_target, alpha), targets)
    assert torch.isclose(loss, 0.5 * 25 * targets.support.mean())  # float32: default rtol 1e-5
    (gradient,) = torch.autograd.grad(loss, alpha)
    # only the regulariser reaches a clamped alpha, and it pulls it back towards 0
    assert torch.allclose(gradient, 5.0 * targets.support / targets.support.numel())


def test_wahr_weight_is_not_detached_from_the_prediction():
    rep = make((64, 64), scale_adaptive=False)
    keypoints = interior_keypoints(rep, batch=1, seed=10)
    targets = rep.encode(keypoints, torch.ones(1, K))
    # Off the window H = 0 and W = |P|, so the per-pixel loss is |P| P^2 with derivative 3 P^2 (for P > 0);
    # a detached weight would give 2 |P| P instead.
    prediction = torch.full_like(targets.heatmaps, 0.5, requires_grad=True)
    (gradient,) = torch.autograd.grad(rep.loss(SAHROutputs(prediction, None), targets), prediction)
    off_window = targets.support == 0
    expected = 0.5 * 3 * 0.5**2 / prediction.numel()
    assert torch.allclose(gradient[off_window], torch.tensor(expected))


@pytest.mark.parametrize("scale_adaptive, weight_adaptive", FLAGS)
def test_invisible_keypoint_adds_no_loss(scale_adaptive, weight_adaptive):
    rep = make((64, 64), scale_adaptive=scale_adaptive, weight_adaptive=weight_adaptive)
    keypoints = interior_keypoints(rep, batch=2, seed=11)
    visible = torch.ones(2, K)
    visible[0, 3] = 0
    targets = rep.encode(keypoints, visible)
    outputs = random_outputs(rep, batch=2, seed=12)
    heatmaps = outputs.heatmaps.clone()
    heatmaps[0, 3] += 4.0
    alpha = None if outputs.alpha is None else outputs.alpha.clone()
    if alpha is not None:
        alpha[0, 3] -= 3.0
    assert rep.loss(SAHROutputs(heatmaps, alpha), targets) == rep.loss(outputs, targets)


@pytest.mark.parametrize("scale_adaptive, weight_adaptive", FLAGS)
def test_nan_keypoint_gets_weight_zero_and_finite_loss_and_gradients(scale_adaptive, weight_adaptive):
    rep = make((64, 64), scale_adaptive=scale_adaptive, weight_adaptive=weight_adaptive)
    keypoints = interior_keypoints(rep, batch=2, seed=13)
    keypoints[1, 0] = math.nan
    targets = rep.encode(keypoints, torch.ones(2, K))
    assert targets.weight[1, 0] == 0 and targets.heatmaps[1, 0].abs().sum() == 0
    outputs = random_outputs(rep, batch=2, seed=14)
    heatmaps = outputs.heatmaps.requires_grad_()
    loss = rep.loss(SAHROutputs(heatmaps, outputs.alpha), targets)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(heatmaps.grad).all()


def test_keypoint_whose_window_misses_the_map_gets_weight_zero():
    rep = make((64, 64))  # sigma 1: a 3-cell window = 12 px
    keypoints = torch.tensor([[[-20.0, 30.0], [30.0, 90.0], [30.0, 30.0], [-10.0, 30.0], [75.0, 30.0]]])
    assert rep.encode(keypoints, torch.ones(1, K)).weight.tolist() == [[0.0, 0.0, 1.0, 1.0, 1.0]]


@pytest.mark.parametrize("scale_adaptive, weight_adaptive", FLAGS)
def test_a_few_adam_steps_on_fixed_features_reduce_the_loss(scale_adaptive, weight_adaptive):
    torch.manual_seed(15)
    rep = make((64, 64), scale_adaptive=scale_adaptive, weight_adaptive=weight_adaptive)
    head = rep.build_head(in_channels=16, in_stride=4)
    features = torch.randn(2, 16, 16, 16)
    targets = rep.encode(interior_keypoints(rep, batch=2, seed=16), torch.ones(2, K))
    losses = adam_losses(rep, head, features, targets, steps=60, lr=1e-2)
    assert all(math.isfinite(value) for value in losses)
    # The reference init starts near the all-zero output, and a 1x1 head on 16 random channels can explain only
    # part of the targets: 60 steps take off 9-35% of the loss depending on the flags; at least 5% must go.
    assert losses[-1] < 0.95 * losses[0]
