"""Specification of the soft-argmax family: IPR, DSNT and the debiased soft-argmax
(heatbench/representations/softargmax.py)."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from heatbench.ops import flip_permutation, softmax_weights
from heatbench.representation import build_representation
from heatbench.representations.softargmax import SoftArgmax, SoftArgmaxConfig
from tests.fitting import adam_losses
from tests.keypoints import mirrored, random_keypoints

K = 3
FLIP_PAIRS = [(1, 2)]
VARIANTS = ["ipr", "dsnt", "debias"]
SIZES = [(64, 64), (128, 128), (256, 192)]


def make(input_size=(64, 64), **overrides) -> SoftArgmax:
    return build_representation("softargmax", input_size, K, **overrides)






@pytest.mark.parametrize("spread", [3.0, 3000.0])  # the second sends most exponents below the clamp
def test_softmax_weights_are_the_softmax_and_its_log_normaliser(spread):
    logits = spread * torch.randn(2, 3, 8, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    weights, total, log_normaliser = softmax_weights(logits, scale=0.5)
    expected = (0.5 * logits).flatten(-2).softmax(dim=-1).view_as(logits)
    torch.testing.assert_close(weights / total[..., None, None], expected, rtol=0, atol=1e-15)
    torch.testing.assert_close(log_normaliser, torch.logsumexp(0.5 * logits.flatten(-2), dim=-1))


# --- configuration ---------------------------------------------------------------------------------------


def test_beta_defaults_to_the_variants_published_value_and_is_recorded():
    assert [make(variant=v).config.softmax_beta for v in VARIANTS] == [1.0, 1.0, 10.0]
    assert make(variant="debias", beta=3.0).config.softmax_beta == 3.0
    assert make(variant="debias").resolved_config()["beta"] == 10.0


@pytest.mark.parametrize("field, value", [
    ("variant", "dsnt2"), ("beta", 0.0), ("beta", math.inf), ("js_weight", -1.0), ("js_sigma", 0.0),
    ("stride", 0), ("stride", 2.5), ("stride", True),
])
def test_invalid_config_field_is_rejected_by_name(field, value):
    with pytest.raises(ValueError, match=field):
        SoftArgmaxConfig(**{field: value})


def test_head_maps_stride_4_features_to_one_logit_map_per_keypoint():
    rep = make((64, 48))
    outputs = rep.build_head(in_channels=8, in_stride=4)(torch.randn(2, 8, 16, 12))
    assert outputs.shape == (2, K, 16, 12) and rep.output_size() == (16, 12)
    with pytest.raises(ValueError, match="stride"):
        rep.build_head(in_channels=8, in_stride=8)


# --- round trip and flip ---------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_ideal_outputs_decode_to_the_keypoint_anywhere_inside_the_hull_of_the_cell_centres(variant, size):
    rep = make(size, variant=variant)
    # The hull is [s/2, W - s/2]: the whole image but its outer half cell, border band included, because the
    # ideal blob's centre is moved until its mean on the cut grid is the keypoint.
    keypoints = random_keypoints(size, K, batch=8, seed=1, margin=2.05)
    decoded, _ = rep.decode(rep.ideal_outputs(keypoints, torch.ones(8, K)))
    assert (decoded - keypoints).norm(dim=-1).max() <= rep.floor_tolerance_px


def test_plain_gaussian_centred_on_a_border_keypoint_would_miss_it():
    """Why the ideal blob is mean-matched: centred on k, a Gaussian cut by the map edge decodes inwards."""
    rep = make((64, 64), variant="ipr")
    keypoints = torch.tensor([[[3.0, 32.0]] * K])  # 0.25 cells inside the first cell's centre
    cells = (torch.arange(16) + 0.5).expand(1, K, 16)
    log_profile = torch.log_softmax(-(cells - keypoints[..., :1] / 4) ** 2 / 2, dim=-1)  # sigma = 1 cell
    centred = log_profile.unsqueeze(-2) + torch.log_softmax(-(cells - 8.0) ** 2 / 2, dim=-1).unsqueeze(-1)
    naive_error = (rep.decode(centred)[0] - keypoints).norm(dim=-1).min()
    matched_error = (rep.decode(rep.ideal_outputs(keypoints, torch.ones(1, K)))[0] - keypoints).norm(dim=-1).max()
    assert naive_error > 1.0 and matched_error <= rep.floor_tolerance_px  # the cut tail costs 1.56 px here


@pytest.mark.parametrize("variant", VARIANTS)
def test_flip_back_mirrors_the_decoded_keypoints_of_any_output(variant):
    rep = make((64, 48), variant=variant)
    outputs = torch.randn(2, K, 16, 12, generator=torch.Generator().manual_seed(2))
    decoded, scores = rep.decode(outputs)
    flipped, flipped_scores = rep.decode(rep.flip_back(outputs, FLIP_PAIRS))
    # Column reversal mirrors every cell centre exactly; what differs is the summation order (float32).
    assert torch.allclose(flipped, mirrored(decoded, 48, FLIP_PAIRS), atol=1e-4)
    assert torch.allclose(flipped_scores, scores[:, flip_permutation(K, FLIP_PAIRS)])


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_flip_merged_ideal_outputs_decode_like_the_plain_ones(variant, size):
    rep = make(size, variant=variant)
    keypoints = random_keypoints(size, K, seed=3, margin=12.0, batch=4)
    visible = torch.ones(4, K)
    ideal = rep.ideal_outputs(keypoints, visible)
    back = rep.flip_back(rep.ideal_outputs(mirrored(keypoints, size[1], FLIP_PAIRS), visible), FLIP_PAIRS)
    merged, _ = rep.decode(rep.merge_flipped(ideal, back))
    # Both ideal maps decode within the floor tolerance of k, so their merge does too.
    assert (merged - rep.decode(ideal)[0]).norm(dim=-1).max() <= rep.floor_tolerance_px


# --- the debiased soft-argmax ----------------------------------------------------------------------------


def test_debias_removes_background_pull():
    """A peak on a zero-logit background: the plain soft-argmax is pulled to the centre, debias is not."""
    height = width = 16
    logits = torch.zeros(1, K, height, width)
    logits[0, 0, 2, 3] = 1.0  # exp(10) ≈ 22026 against a background of 256 cells of 1: a ≈ 0.99
    logits[0, 1, 12, 13:15] = 0.8  # a two-cell peak, split evenly: its mean is index x = 13.5
    logits[0, 2, 7, 7] = 0.6  # exp(6) ≈ 403 against 256: a ≈ 0.61
    expected = torch.tensor([[3.5, 2.5], [14.0, 12.5], [7.5, 7.5]]) * 4  # cell centres, canonical px
    plain, _ = make(variant="ipr", beta=10.0).decode(logits)
    debiased, _ = make(variant="debias").decode(logits)
    assert (plain[0] - expected).norm(dim=-1)[:2].min() > 0.1  # corners pulled towards the centre (32, 32)
    # The correction is exact for a zero background: float32 rounding only.
    assert torch.allclose(debiased[0], expected, atol=1e-3)


def test_debias_correction_uses_the_softmax_beta():
    """The same map decoded with β = 10 and β = 5: each correction subtracts its own background."""
    logits = torch.zeros(1, K, 16, 16)
    logits[..., 3, 12] = 1.2
    for beta in (5.0, 10.0):
        decoded, _ = make(variant="debias", beta=beta).decode(logits)
        assert torch.allclose(decoded, torch.tensor([12.5, 3.5]) * 4, atol=1e-3)


def test_debias_stays_finite_where_the_map_has_no_foreground():
    """All logits <= 0: C <= B, a <= 0, mu_f undefined; the clamped a keeps it within ten map widths."""
    logits = -torch.rand(2, K, 16, 16, generator=torch.Generator().manual_seed(12))
    decoded, scores = make(variant="debias").decode(logits)
    assert torch.isfinite(decoded).all() and torch.isfinite(scores).all()
    assert ((decoded - 32).abs() <= 10 * 64).all()


# --- loss ------------------------------------------------------------------------------------------------


def test_dsnt_ideal_output_zeroes_both_loss_terms_in_the_interior():
    rep = make((64, 64), variant="dsnt")
    keypoints = random_keypoints((64, 64), K, seed=4, margin=12.0, batch=4)
    visible = torch.ones(4, K)
    at_ideal = rep.loss(rep.ideal_outputs(keypoints, visible), rep.encode(keypoints, visible))
    shifted = rep.loss(rep.ideal_outputs(keypoints + 2.0, visible), rep.encode(keypoints, visible))
    # 12 px = 3 cells = 3 σ_t from the edge: the mean-matched blob is the JS target up to its cut tail.
    assert at_ideal < 1e-4 and shifted > 100 * at_ideal


@pytest.mark.parametrize("variant", VARIANTS)
def test_invisible_keypoint_adds_no_loss_and_gets_no_gradient(variant):
    rep = make(variant=variant)
    keypoints = random_keypoints((64, 64), K, batch=2, seed=5)
    visible = torch.ones(2, K)
    visible[1, 2] = 0
    targets = rep.encode(keypoints, visible)
    outputs = torch.randn(2, K, 16, 16, generator=torch.Generator().manual_seed(6), requires_grad=True)
    loss = rep.loss(outputs, targets)
    loss.backward()
    changed = outputs.detach().clone()
    changed[1, 2] = torch.randn(16, 16)
    assert rep.loss(changed, targets) == loss
    assert (outputs.grad[1, 2] == 0).all() and outputs.grad[0].abs().sum() > 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_nan_and_outside_keypoints_get_weight_zero_and_a_finite_gradient(variant):
    rep = make(variant=variant)
    keypoints = random_keypoints((64, 64), K, batch=2, seed=7)
    keypoints[0, 0] = math.nan
    keypoints[1, 1] = torch.tensor([70.0, 10.0])  # right of the 64 px input
    targets = rep.encode(keypoints, torch.ones(2, K))
    assert targets.weight.tolist() == [[0, 1, 1], [1, 0, 1]]
    outputs = torch.randn(2, K, 16, 16, requires_grad=True)
    rep.loss(outputs, targets).backward()
    assert torch.isfinite(outputs.grad).all()


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_few_adam_steps_on_the_head_reduce_the_loss(variant):
    torch.manual_seed(8)
    rep = make(variant=variant)
    head = rep.build_head(in_channels=32, in_stride=4)
    features = torch.randn(2, 32, 16, 16)
    targets = rep.encode(random_keypoints((64, 64), K, batch=2, seed=9, margin=8.0), torch.ones(2, K))
    losses = adam_losses(rep, head, features, targets, steps=30, lr=1e-2)
    assert all(math.isfinite(value) for value in losses)
    # Observed ratios after 30 steps: ipr 0.19, debias 0.02, dsnt 0.68 (its JS term asks for the whole map's
    # shape, which a 1x1 conv on 32 random channels fits slowly).
    assert losses[-1] < 0.8 * losses[0]


# --- decoding --------------------------------------------------------------------------------------------


def test_score_is_the_mass_of_the_3x3_window_at_the_peak():
    rep = make(variant="ipr")
    flat = torch.zeros(1, K, 16, 16)
    assert (rep.decode(flat)[1] <= 9 / 256).all()  # the window of a flat map holds 9 cells, 4 in a corner
    keypoints = random_keypoints((64, 64), K, batch=1, seed=10, margin=12.0)
    _, scores = rep.decode(rep.ideal_outputs(keypoints, torch.ones(1, K)))
    # The ideal blob has σ = 1 cell: three cells hold 0.834 (keypoint on a cell edge) to 0.883 (on a centre)
    # of each axis's mass, so the window holds 0.834² to 0.883², whatever the sub-cell phase.
    assert ((scores > 0.834**2 - 1e-3) & (scores < 0.883**2 + 1e-3)).all()


@settings(max_examples=40, deadline=None)
@given(x=st.floats(2.0, 190.0), y=st.floats(2.0, 254.0), variant=st.sampled_from(VARIANTS))
def test_any_keypoint_in_the_hull_of_the_cell_centres_round_trips(x, y, variant):
    rep = make((256, 192), variant=variant)  # the hull is [2, 190] x [2, 254]: all but the outer half cell
    keypoints = torch.tensor([[[x, y]] * K])
    decoded, _ = rep.decode(rep.ideal_outputs(keypoints, torch.ones(1, K)))
    assert (decoded - keypoints).norm(dim=-1).max() <= rep.floor_tolerance_px


def test_decode_follows_the_dtype_of_the_outputs():
    rep = make(variant="debias")
    decoded, scores = rep.decode(torch.randn(1, K, 16, 16, dtype=torch.float64))
    assert decoded.dtype == scores.dtype == torch.float64
