"""Specification of heatmap distribution matching (heatbench/representations/hdm.py)."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog

from heatbench.ops import flip_permutation
from heatbench.representation import build_representation
from heatbench.representations.hdm import HDM, HDMConfig, bilinear_split, sinkhorn_log_plan
from tests.fitting import adam_losses
from tests.keypoints import mirrored, random_keypoints

K = 3
FLIP_PAIRS = [(1, 2)]
SIZES = [(64, 64), (128, 128), (256, 192)]
DECODERS = ["local_mean", "argmax", "quarter_offset", "dark", "udp_dark"]


def make(input_size=(64, 64), **overrides) -> HDM:
    return build_representation("hdm", input_size, K, **overrides)






def exact_emd(supply: np.ndarray, demand: np.ndarray, cost: np.ndarray) -> float:
    """The balanced transport problem min <P, C> s.t. P 1 = supply, P^T 1 = demand, P >= 0, by linear programming."""
    n, m = cost.shape
    rows = np.kron(np.eye(n), np.ones((1, m)))  # sum_j P_ij = supply_i
    columns = np.kron(np.ones((1, n)), np.eye(m))  # sum_i P_ij = demand_j
    result = linprog(cost.ravel(), A_eq=np.vstack((rows, columns)), b_eq=np.concatenate((supply, demand)),
                     bounds=(0, None), method="highs")
    assert result.status == 0, result.message
    return result.fun


# --- configuration ---------------------------------------------------------------------------------------


def test_defaults_are_subpixel_demanders_sinkhorn_the_local_mean_and_softplus():
    assert HDM.default_config((256, 192)) == HDMConfig("subpixel", 0.05, 100, "local_mean", 1.0, 4, "softplus")


@pytest.mark.parametrize("field, value", [
    ("demanders", "dense"), ("epsilon", 0.0), ("epsilon", math.nan), ("iterations", 0), ("iterations", 10.0),
    ("decoder", "soft"), ("blur_sigma", -1.0), ("stride", 0), ("normalisation", "relu"),
])
def test_invalid_config_field_is_rejected_by_name(field, value):
    with pytest.raises(ValueError, match=field):
        HDMConfig(**{field: value})


def test_head_maps_stride_4_features_to_one_logit_map_per_keypoint():
    rep = make((64, 48))
    outputs = rep.build_head(in_channels=8, in_stride=4)(torch.randn(2, 8, 16, 12))
    assert outputs.shape == (2, K, 16, 12) and rep.output_size() == (16, 12)
    with pytest.raises(ValueError, match="stride"):
        rep.build_head(in_channels=8, in_stride=8)


# --- demanders and the solver ----------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(x=st.floats(0.5, 11.5), y=st.floats(0.5, 7.5))
def test_bilinear_split_is_a_unit_mass_whose_mean_is_the_keypoint(x, y):
    target = torch.tensor([x, y], dtype=torch.float64)
    cells, weights = bilinear_split(target, (8, 12))  # targets inside the hull of the centres, [0.5, n - 0.5]
    assert (weights >= 0).all() and math.isclose(weights.sum().item(), 1.0, abs_tol=1e-12)
    assert (cells >= 0).all() and (cells[:, 0] < 12).all() and (cells[:, 1] < 8).all()
    assert torch.allclose((weights.unsqueeze(-1) * (cells + 0.5)).sum(dim=0), target, atol=1e-12)


def test_sinkhorn_matches_exact_emd_on_small_problem():
    generator = torch.Generator().manual_seed(0)
    batch, n, m, epsilon = 5, 9, 4, 0.05
    supply = torch.rand(batch, n, generator=generator, dtype=torch.float64).softmax(dim=-1)
    demand = torch.rand(batch, m, generator=generator, dtype=torch.float64).softmax(dim=-1)
    suppliers = torch.rand(batch, n, 2, generator=generator, dtype=torch.float64) * 3
    demanders = torch.rand(batch, m, 2, generator=generator, dtype=torch.float64) * 3
    cost = torch.cdist(suppliers, demanders)  # Euclidean, as HDM's ground cost
    plan = sinkhorn_log_plan(supply.log(), demand.log(), cost, epsilon, iterations=500).exp()
    solved = (plan * cost).sum(dim=(-2, -1))
    exact = torch.tensor([exact_emd(supply[b].numpy(), demand[b].numpy(), cost[b].numpy()) for b in range(batch)],
                         dtype=torch.float64)
    assert torch.allclose(plan.sum(dim=-1), supply, atol=1e-12)  # the last update is the suppliers'
    assert torch.allclose(plan.sum(dim=-2), demand, atol=1e-6)   # converged: a feasible plan
    # A feasible plan costs at least the EMD; the entropic one at most ε·H(demand) <= ε log m more, because
    # <P_ε, C> + ε KL(P_ε || a⊗b) <= <P*, C> + ε KL(P* || a⊗b) and the mutual information KL is <= log m.
    assert (solved >= exact - 1e-6).all() and (solved <= exact + epsilon * math.log(m)).all()


def test_sinkhorn_gradient_matches_finite_differences():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    demand = torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]], dtype=torch.float64)
    cost = torch.rand(2, 6, 3, generator=generator, dtype=torch.float64) * 2

    def transport_cost(z):
        return (sinkhorn_log_plan(z.log_softmax(dim=-1), demand.log(), cost, 0.3, iterations=30).exp() * cost).sum()

    assert torch.autograd.gradcheck(transport_cost, (logits,))


def test_subpixel_and_naive_losses_agree_when_the_keypoint_is_on_a_cell_centre():
    """One demander holds all the mass there, and the EMD to one point is the closed form sum_i p_i ||X_i - u||."""
    keypoints = (torch.randint(2, 14, (2, K, 2), generator=torch.Generator().manual_seed(2)) + 0.5) * 4
    outputs = torch.randn(2, K, 16, 16, generator=torch.Generator().manual_seed(3))
    losses = [rep.loss(outputs, rep.encode(keypoints, torch.ones(2, K)))
              for rep in (make(demanders="naive"), make(demanders="subpixel", iterations=300))]
    # The three empty demanders (mass 1e-38) draw nothing; what is left is the entropic plan's bias.
    assert math.isclose(losses[0].item(), losses[1].item(), rel_tol=1e-4)


@pytest.mark.parametrize("normalisation", ["softplus", "softmax"])
@pytest.mark.parametrize("demanders", ["naive", "subpixel"])
def test_ideal_outputs_minimise_the_loss(demanders, normalisation):
    rep = make(demanders=demanders, normalisation=normalisation)
    keypoints = random_keypoints((64, 64), K, seed=4, margin=12.0, batch=4)
    visible = torch.ones(4, K)
    targets = rep.encode(keypoints, visible)
    at_ideal = rep.loss(rep.ideal_outputs(keypoints, visible), targets)
    for shift in ([1.0, 0.0], [0.0, -2.0], [3.0, 3.0]):
        moved = rep.ideal_outputs(keypoints + torch.tensor(shift), visible)
        assert rep.loss(moved, targets) > at_ideal
    if demanders == "subpixel":
        assert at_ideal < 1e-6  # the split is the demand itself; the entropic plan leaks e^-20 per cell
    else:
        assert at_ideal <= math.sqrt(2) / 2  # all mass in u's cell, at most half a cell diagonal from u


def test_softplus_normalisation_is_softplus_over_its_sum_and_keeps_a_gradient_far_below_zero():
    rep = make()
    z = torch.tensor([[[[-300.0, -30.0], [0.0, 4.0]]]], dtype=torch.float64, requires_grad=True)
    log_p = rep.log_probabilities(z)
    mass = torch.nn.functional.softplus(z.detach()).flatten(-2)
    assert torch.allclose(log_p[..., 1:].exp(), mass[..., 1:] / mass.sum(-1, keepdim=True), rtol=1e-12, atol=0)
    assert log_p[..., 0].item() == pytest.approx(-300 - math.log(mass.sum().item()))  # where softplus underflows
    log_p[..., 0].sum().backward()
    assert torch.isfinite(z.grad).all() and z.grad[0, 0, 0, 0] > 0.99


# --- round trip and flip ---------------------------------------------------------------------------------


@pytest.mark.parametrize("normalisation", ["softplus", "softmax"])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_subpixel_ideal_decodes_exactly_with_the_local_mean(size, normalisation):
    rep = make(size, normalisation=normalisation)
    keypoints = random_keypoints(size, K, batch=8, seed=5, margin=2.0)  # the whole hull of the cell centres
    decoded, scores = rep.decode(rep.ideal_outputs(keypoints, torch.ones(8, K)))
    assert (decoded - keypoints).norm(dim=-1).max() <= rep.floor_tolerance_px
    assert torch.allclose(scores, torch.ones_like(scores))  # the whole split sits in the 3 x 3 window


@pytest.mark.parametrize("demanders", ["naive", "subpixel"])
@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_every_variant_round_trips_within_its_stated_tolerance(demanders, decoder, size):
    rep = make(size, demanders=demanders, decoder=decoder)
    margin = max(12.0, min(size) / 8)  # heatbench.floor's interior, for which the tolerance is stated
    keypoints = random_keypoints(size, K, batch=8, seed=6, margin=margin)
    decoded, _ = rep.decode(rep.ideal_outputs(keypoints, torch.ones(8, K)))
    assert (decoded - keypoints).norm(dim=-1).max() <= rep.floor_tolerance_px


@pytest.mark.parametrize("demanders", ["naive", "subpixel"])
def test_flip_back_mirrors_the_decoded_keypoints_of_any_output(demanders):
    rep = make((64, 48), demanders=demanders)
    outputs = torch.randn(2, K, 16, 12, generator=torch.Generator().manual_seed(7))
    decoded, scores = rep.decode(outputs)
    flipped, flipped_scores = rep.decode(rep.flip_back(outputs, FLIP_PAIRS))
    # Column reversal mirrors every cell exactly; the window sums differ only in float32 summation order.
    assert torch.allclose(flipped, mirrored(decoded, 48, FLIP_PAIRS), atol=1e-4)
    assert torch.allclose(flipped_scores, scores[:, flip_permutation(K, FLIP_PAIRS)], atol=1e-6)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_flip_merged_ideal_outputs_decode_like_the_plain_ones(size):
    rep = make(size)
    keypoints = random_keypoints(size, K, seed=8, margin=12.0, batch=4)
    visible = torch.ones(4, K)
    ideal = rep.ideal_outputs(keypoints, visible)
    back = rep.flip_back(rep.ideal_outputs(mirrored(keypoints, size[1], FLIP_PAIRS), visible), FLIP_PAIRS)
    merged, _ = rep.decode(rep.merge_flipped(ideal, back))
    # The mirrored split equals the split up to float32 rounding of x -> W - x, so the decodes agree to it.
    assert (merged - rep.decode(ideal)[0]).norm(dim=-1).max() <= rep.floor_tolerance_px


# --- loss masking and training ---------------------------------------------------------------------------


@pytest.mark.parametrize("demanders", ["naive", "subpixel"])
def test_invisible_keypoint_adds_no_loss_and_gets_no_gradient(demanders):
    rep = make(demanders=demanders)
    keypoints = random_keypoints((64, 64), K, batch=2, seed=9)
    visible = torch.ones(2, K)
    visible[1, 2] = 0
    targets = rep.encode(keypoints, visible)
    outputs = torch.randn(2, K, 16, 16, generator=torch.Generator().manual_seed(10), requires_grad=True)
    loss = rep.loss(outputs, targets)
    loss.backward()
    changed = outputs.detach().clone()
    changed[1, 2] = torch.randn(16, 16)
    assert rep.loss(changed, targets) == loss
    assert (outputs.grad[1, 2] == 0).all() and outputs.grad[0].abs().sum() > 0


@pytest.mark.parametrize("demanders", ["naive", "subpixel"])
def test_nan_and_outside_keypoints_get_weight_zero_and_a_finite_gradient(demanders):
    rep = make(demanders=demanders)
    keypoints = random_keypoints((64, 64), K, batch=2, seed=11)
    keypoints[0, 0] = math.nan
    keypoints[1, 1] = torch.tensor([10.0, -3.0])  # above the input
    targets = rep.encode(keypoints, torch.ones(2, K))
    assert targets.weight.tolist() == [[0, 1, 1], [1, 0, 1]]
    outputs = torch.randn(2, K, 16, 16, requires_grad=True)
    loss = rep.loss(outputs, targets)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(outputs.grad).all()


@pytest.mark.parametrize("normalisation", ["softplus", "softmax"])
@pytest.mark.parametrize("demanders", ["naive", "subpixel"])
def test_a_few_adam_steps_on_the_head_reduce_the_loss(demanders, normalisation):
    torch.manual_seed(12)
    # fewer Sinkhorn rounds keep the test fast; the loss is the same kind
    rep = make(demanders=demanders, iterations=30, normalisation=normalisation)
    head = rep.build_head(in_channels=32, in_stride=4)
    features = torch.randn(2, 32, 16, 16)
    targets = rep.encode(random_keypoints((64, 64), K, batch=2, seed=13, margin=8.0), torch.ones(2, K))
    losses = adam_losses(rep, head, features, targets, steps=30, lr=3e-2)
    assert all(math.isfinite(value) for value in losses)
    # observed ratios: softplus 0.80-0.82 (its map sharpens linearly in z), softmax 0.24 (exponentially)
    assert losses[-1] < 0.9 * losses[0]


def test_score_is_the_mass_of_the_3x3_window_at_the_peak():
    rep = make()
    flat = torch.zeros(1, K, 16, 16)
    assert (rep.decode(flat)[1] <= 9 / 256).all()  # the window of a flat map holds 9 cells, 4 in a corner


def test_decode_follows_the_dtype_of_the_outputs():
    decoded, scores = make().decode(torch.randn(1, K, 16, 16, dtype=torch.float64))
    assert decoded.dtype == scores.dtype == torch.float64
