"""Specification of the SimCC representation (heatbench/representations/simcc.py)."""
import math

import pytest
import torch
import torch.nn.functional as F

from heatbench.decoders.dark import blur_kernel_size
from heatbench.representation import build_representation
from heatbench.representations.simcc import SimCC, SimCCConfig, SimCCOutputs
from tests.keypoints import mirrored, random_keypoints

K = 5
FLIP_PAIRS = [(1, 2), (3, 4)]
LABELS = ["onehot", "gaussian"]


def make(input_size, **overrides) -> SimCC:
    return build_representation("simcc", input_size, K, **overrides)




def random_outputs(rep: SimCC, batch, seed) -> SimCCOutputs:
    generator = torch.Generator().manual_seed(seed)
    bins_y, bins_x = rep.output_size()
    return SimCCOutputs(torch.randn(batch, K, bins_x, generator=generator),
                        torch.randn(batch, K, bins_y, generator=generator))




# --- configuration ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("input_size, label, split_ratio, sigma, smoothing", [
    ((64, 64), "onehot", 3.0, 3.0, 0.1),
    ((128, 128), "onehot", 3.0, 4.0, 0.1),  # the ResNet-50 config, as heatbench's backbone
    ((256, 192), "gaussian", 2.0, 6.0, 0.1),
    ((256, 256), "gaussian", 2.0, 6.0, 0.2),
])
def test_default_config_follows_the_papers_table(input_size, label, split_ratio, sigma, smoothing):
    assert SimCC.default_config(input_size) == SimCCConfig(label, split_ratio, sigma, smoothing, use_dark=False)


@pytest.mark.parametrize("field, value", [
    ("label", "laplace"), ("split_ratio", 0.0), ("split_ratio", float("nan")), ("split_ratio", "2"), ("sigma", -1.0),
    ("label_smoothing", 1.0), ("label_smoothing", -0.1), ("use_dark", "yes"),
])
def test_invalid_config_field_is_rejected_by_name(field, value):
    with pytest.raises(ValueError, match=field):
        SimCCConfig(**{field: value})


def test_split_ratio_that_does_not_tile_the_input_is_rejected():
    with pytest.raises(ValueError, match="whole number of bins"):
        make((64, 65), split_ratio=1.5)


def test_head_maps_stride_4_features_to_logits_per_axis():
    torch.manual_seed(0)
    rep = make((64, 48), split_ratio=1.5)
    outputs = rep.build_head(in_channels=8, in_stride=4)(torch.randn(3, 8, 16, 12))
    assert outputs.x_logits.shape == (3, K, 72) and outputs.y_logits.shape == (3, K, 96)
    assert rep.output_size() == (96, 72)


# --- encoding --------------------------------------------------------------------------------------------


def test_label_smoothing_mass_sums_to_one():
    rep = make((64, 64), label="onehot", label_smoothing=0.1)
    targets = rep.encode(random_keypoints((64, 64), K, batch=4), torch.ones(4, K))
    for label in (targets.x, targets.y):
        # float32 sum of 192 terms: rounding well under 1e-5
        torch.testing.assert_close(label.sum(-1), torch.ones(4, K), atol=1e-5, rtol=0)
        torch.testing.assert_close(label.amax(-1), torch.full((4, K), 0.9))
        torch.testing.assert_close(label.amin(-1), torch.full((4, K), 0.1 / 191))


def test_onehot_label_peaks_on_the_bin_containing_the_keypoint():
    rep = make((8, 8), label="onehot", split_ratio=2.0, label_smoothing=0.0)
    # at k = 2, bin 4 covers [2.0, 2.5) px and bin 5 covers [2.5, 3.0): either side of a bin edge
    targets = rep.encode(torch.tensor([[[2.49, 2.51]] * K]), torch.ones(1, K))
    assert targets.x[0, 0].argmax() == 4 and targets.y[0, 0].argmax() == 5


def test_gaussian_label_is_the_repos_density_at_bin_centres():
    rep = make((8, 8), label="gaussian", split_ratio=2.0, sigma=1.5)
    targets = rep.encode(torch.tensor([[[3.3, 4.0]] * K]), torch.ones(1, K))
    mu = 3.3 * 2
    expected = [math.exp(-((i + 0.5) - mu) ** 2 / (2 * 1.5**2)) / (1.5 * math.sqrt(2 * math.pi)) for i in range(16)]
    torch.testing.assert_close(targets.x[0, 0], torch.tensor(expected))


def test_nan_keypoint_gets_zero_weight():
    keypoints = random_keypoints((64, 64), K, batch=2)
    keypoints[0, 1, 0] = float("nan")
    keypoints[1, 3] = float("nan")
    for label in LABELS:
        rep = make((64, 64), label=label)
        targets = rep.encode(keypoints, torch.ones(2, K))
        assert targets.weight[0, 1] == 0 and targets.weight[1, 3] == 0 and targets.weight.sum() == 2 * K - 2
        assert all(torch.isfinite(t).all() for t in targets)
        outputs = SimCCOutputs(*(t.requires_grad_() for t in random_outputs(rep, 2, seed=1)))
        loss = rep.loss(outputs, targets)
        loss.backward()
        assert torch.isfinite(loss) and all(torch.isfinite(t.grad).all() for t in outputs)


@pytest.mark.parametrize("label, inside, outside", [
    # one-hot: the label must fall on a bin, x in [0, W)
    ("onehot", [0.0, 63.99], [-0.01, 64.0]),
    # gaussian, sigma 3 bins at k = 3: the 3-sigma interval [x - 3, x + 3] px must touch [0, 64]
    ("gaussian", [-2.99, 66.99], [-3.01, 67.01]),
])
def test_keypoint_whose_label_misses_the_bins_gets_zero_weight(label, inside, outside):
    rep = make((64, 64), label=label, split_ratio=3.0, sigma=3.0)
    x = torch.tensor(inside + outside + [32.0])
    keypoints = torch.stack([x, torch.full_like(x, 32.0)], dim=-1).unsqueeze(0)  # (1, K, 2)
    assert rep.encode(keypoints, torch.ones(1, K)).weight.tolist() == [[1.0, 1.0, 0.0, 0.0, 1.0]]
    transposed = keypoints.flip(-1)  # the same test on y
    assert rep.encode(transposed, torch.ones(1, K)).weight.tolist() == [[1.0, 1.0, 0.0, 0.0, 1.0]]


# --- loss ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("label", LABELS)
def test_invisible_keypoint_adds_no_loss(label):
    rep = make((32, 24), label=label, split_ratio=2.0, sigma=2.0)
    visible = torch.ones(3, K)
    visible[1, 2] = 0
    targets = rep.encode(random_keypoints((32, 24), K, batch=3), visible)
    outputs = SimCCOutputs(*(t.requires_grad_() for t in random_outputs(rep, 3, seed=2)))
    loss = rep.loss(outputs, targets)
    loss.backward()
    assert all(t.grad[1, 2].abs().max() == 0 for t in outputs)
    assert all(t.grad[0, 2].abs().max() > 0 for t in outputs)
    scrambled = SimCCOutputs(*(t.detach().clone() for t in outputs))
    scrambled.x_logits[1, 2] = 100.0 * torch.randn(scrambled.x_logits.shape[-1])
    torch.testing.assert_close(rep.loss(scrambled, targets), loss.detach())


@pytest.mark.parametrize("label", LABELS)
def test_loss_matches_the_repos_per_joint_formula(label):
    """The repo's loops written out on a 4x3 input, k = 2 (N_y = 8, N_x = 6), B = 2, K = 3."""
    rep = SimCC(SimCCConfig(label=label, split_ratio=2.0, sigma=1.0, label_smoothing=0.2), (4, 3), 3)
    keypoints = torch.tensor([[[0.3, 1.2], [2.9, 3.6], [1.5, 2.2]], [[1.6, 0.1], [1.1, 2.7], [0.7, 0.9]]])
    visible = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 1.0]])
    generator = torch.Generator().manual_seed(3)
    outputs = SimCCOutputs(torch.randn(2, 3, 6, generator=generator), torch.randn(2, 3, 8, generator=generator))

    def label_vector(coord, bins):
        if label == "gaussian":
            return torch.tensor([math.exp(-((i + 0.5) - 2 * coord) ** 2 / 2) / math.sqrt(2 * math.pi)
                                 for i in range(bins)])
        vector = torch.full((bins,), 0.2 / (bins - 1))
        vector[math.floor(2 * coord)] = 0.8
        return vector

    total = 0.0
    for joint in range(3):
        for axis, logits, bins in ((0, outputs.x_logits, 6), (1, outputs.y_logits, 8)):
            per_sample = torch.stack([
                F.kl_div(logits[b, joint].log_softmax(-1), label_vector(keypoints[b, joint, axis].item(), bins),
                         reduction="none")
                for b in range(2)])
            per_sample = per_sample.mean(-1) if label == "gaussian" else per_sample.sum(-1)
            weighted = per_sample * visible[:, joint]
            total += weighted.mean() if label == "gaussian" else weighted.sum()
    expected = total / 3 if label == "gaussian" else total / 2  # KLDiscretLoss divides by K, NMTCritierion by B
    torch.testing.assert_close(rep.loss(outputs, rep.encode(keypoints, visible)), expected)


@pytest.mark.parametrize("label", LABELS)
def test_loss_decreases_when_fitting_learnable_logits(label):
    torch.manual_seed(4)
    rep = make((32, 32), label=label, split_ratio=2.0, sigma=2.0)
    targets = rep.encode(random_keypoints((32, 32), K, batch=2, seed=4), torch.ones(2, K))
    outputs = SimCCOutputs(*(torch.zeros(2, K, 64, requires_grad=True) for _ in range(2)))
    optimiser = torch.optim.Adam(outputs, lr=0.1)
    losses = []
    for _ in range(30):
        optimiser.zero_grad()
        loss = rep.loss(outputs, targets)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    # 30 Adam steps of 0.1 move each logit by up to 3, enough to more than halve a KL that starts at uniform
    assert losses[-1] < 0.5 * losses[0]
    assert all(later <= earlier for earlier, later in zip(losses, losses[1:]))


# --- decoding, flip and the codec floor -------------------------------------------------------------------


def dark_margin_px(rep: SimCC) -> float:
    """How far from the border DARK's zero-padded blur and its 2-bin stencil stay on the bins, in px."""
    return (blur_kernel_size(rep.config.sigma) // 2 + 2) / rep.config.split_ratio


@pytest.mark.parametrize("use_dark", [False, True])
@pytest.mark.parametrize("label", LABELS)
@pytest.mark.parametrize("input_size, split_ratio", [
    ((64, 64), None), ((128, 128), None), ((256, 192), None),
    ((256, 192), 1.5), ((256, 192), 2.0), ((256, 192), 3.0),
])
def test_round_trip_of_sub_pixel_keypoints_is_within_half_a_bin(label, use_dark, input_size, split_ratio):
    overrides = {"label": label, "use_dark": use_dark}
    if split_ratio is not None:
        overrides["split_ratio"] = split_ratio
    rep = make(input_size, **overrides)
    # argmax holds anywhere on the input; DARK in the interior its blur defines (see floor_tolerance_px)
    keypoints = random_keypoints(input_size, K, seed=5, margin=dark_margin_px(rep) if use_dark else 0.0, batch=64)
    decoded, scores = rep.decode(rep.ideal_outputs(keypoints, torch.ones(64, K)))
    error = (decoded - keypoints).abs()
    # floor_tolerance_px is the Euclidean bound (sqrt 2 half-bins); per axis the bound is half a bin
    assert (error <= 0.5 / rep.config.split_ratio + 1e-4).all()
    assert (error.norm(dim=-1) <= rep.floor_tolerance_px).all()
    assert torch.isfinite(scores).all() and (scores > 0).all()


@pytest.mark.parametrize("input_size, split_ratio, sigma", [
    ((64, 64), 3.0, 3.0), ((64, 64), 1.5, 3.0), ((128, 128), 2.0, 4.0), ((256, 192), 2.0, 6.0), ((256, 192), 2.0, 2.0),
])
def test_dark_recovers_the_sub_bin_position_of_a_gaussian_label(input_size, split_ratio, sigma):
    rep = make(input_size, label="gaussian", split_ratio=split_ratio, sigma=sigma, use_dark=True)
    keypoints = random_keypoints(input_size, K, seed=9, margin=dark_margin_px(rep), batch=64)
    decoded, _ = rep.decode(rep.ideal_outputs(keypoints, torch.ones(64, K)))
    # the blurred sampled Gaussian is log-quadratic up to the blur's truncation: 1.7e-4 px measured at sigma 2,
    # < 6e-5 px from sigma 3 up; 1e-3 px is 100x below the half-bin argmax floor
    assert (decoded - keypoints).abs().max() < 1e-3


def test_decode_scores_are_the_smaller_axis_peak():
    rep = make((16, 16), split_ratio=1.0)
    x_logits = torch.full((1, K, 16), -10.0)
    y_logits = torch.full((1, K, 16), -10.0)
    x_logits[..., 3] = 10.0
    y_logits[..., 7] = 1.0
    keypoints, scores = rep.decode(SimCCOutputs(x_logits, y_logits))
    torch.testing.assert_close(keypoints, torch.tensor([3.5, 7.5]).expand(1, K, 2))
    torch.testing.assert_close(scores, y_logits.softmax(-1).amax(-1))


@pytest.mark.parametrize("use_dark", [False, True])
@pytest.mark.parametrize("label", LABELS)
def test_flip_is_exact_for_non_integer_split_ratio(label, use_dark):
    input_size = (64, 48)
    rep = make(input_size, label=label, split_ratio=1.5, sigma=3.0, use_dark=use_dark)
    keypoints = random_keypoints(input_size, K, batch=16, seed=6)
    visible = torch.ones(16, K)
    ideal = rep.ideal_outputs(keypoints, visible)
    mirrored_outputs = rep.ideal_outputs(mirrored(keypoints, input_size[1], FLIP_PAIRS), visible)
    flipped_back = rep.flip_back(mirrored_outputs, FLIP_PAIRS)
    # the labels match bin for bin: only float32 rounding of (i + 0.5) - x*k against its mirror differs
    for got, expected in zip(flipped_back, ideal):
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-5)
    merged, _ = rep.decode(rep.merge_flipped(ideal, flipped_back))
    plain, _ = rep.decode(ideal)
    # argmax picks the same bins; DARK's sub-bin step sees logits that differ by float32 rounding only
    torch.testing.assert_close(merged, plain, atol=1e-4 if use_dark else 0.0, rtol=0)


def test_onehot_flip_merge_averages_probabilities():
    rep = make((32, 32), label="onehot")
    first, second = random_outputs(rep, 2, seed=7), random_outputs(rep, 2, seed=8)
    merged = rep.merge_flipped(first, second)
    for m, a, b in zip(merged, first, second):
        torch.testing.assert_close(m.softmax(-1), (a.softmax(-1) + b.softmax(-1)) / 2)


def test_gaussian_flip_merge_averages_logits():
    rep = make((32, 32), label="gaussian", sigma=2.0)
    first, second = random_outputs(rep, 2, seed=7), random_outputs(rep, 2, seed=8)
    for m, a, b in zip(rep.merge_flipped(first, second), first, second):
        torch.testing.assert_close(m, (a + b) / 2)
