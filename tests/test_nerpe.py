"""NerPE: continuous targets in the normalised frame, local ensemble, sampling, standard and progressive decoding."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from heatbench import build_representation
from heatbench.render import render_heatmaps, render_native
from heatbench.representations.nerpe import LearnedField, NerPEConfig
from tests.fitting import adam_losses

SIZES = [(64, 64), (128, 128), (256, 192)]  # (H, W)
PROOF = settings(max_examples=25, deadline=None, derandomize=True)
# a narrow head and coarse query grids, where a test is about the plumbing and not the paper's widths (fast)
SMALL = {"channels": 32, "hidden": (32, 32), "samples_per_axis": 2, "queries_per_cell": 4}


def nerpe(size=(64, 64), keypoints=3, **overrides):
    return build_representation("nerpe", size, keypoints, **overrides)


def random_field(rep, batch=2, in_channels=32, seed=0) -> LearnedField:
    """A randomly initialised head (eval mode) on random, non-trivial backbone features."""
    torch.manual_seed(seed)
    head = rep.build_head(in_channels, 4).eval()
    height, width = rep.input_size
    with torch.no_grad():
        return head(torch.randn(batch, in_channels, height // 4, width // 4))


def query_step(rep) -> tuple[float, float]:
    """(x, y) spacing of the final query grid, canonical px."""
    (height, width), (out_h, out_w) = rep.input_size, rep.output_size()
    return width / out_w, height / out_h


unit_points = st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.floats(0, 1, exclude_max=True)),
                       min_size=1, max_size=4)


def to_keypoints(points, size) -> torch.Tensor:
    height, width = size
    return torch.tensor(points, dtype=torch.float32).unsqueeze(0) * torch.tensor([width, height])  # (1, K, 2)


# --- geometry and shapes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("size, grid", [((64, 64), (8, 8)), ((128, 128), (8, 8)), ((256, 192), (8, 6))])
def test_grid_has_eight_cells_on_the_long_side(size, grid):
    rep = nerpe(size)
    assert rep.grid == grid
    assert rep.output_size() == (grid[0] * 32, grid[1] * 32)
    assert random_field(rep, batch=1).features.shape == (1, 256, *grid)


@pytest.mark.parametrize("size, in_stride, cells, grid", [
    ((64, 64), 4, 4, (4, 4)),        # 16 -> 4: two stride-2 convs
    ((128, 128), 32, 8, (8, 8)),     # 4 -> 8: one deconv
    ((64, 64), 4, 6, (6, 6)),        # 16 -> 8 by a conv, then 8 -> 6 by adaptive pooling (ours)
])
def test_neck_zooms_any_feature_size_to_the_cell_grid(size, in_stride, cells, grid):
    torch.manual_seed(0)
    rep = nerpe(size, cells=cells)
    head = rep.build_head(8, in_stride)
    field = head(torch.randn(2, 8, size[0] // in_stride, size[1] // in_stride))
    assert field.features.shape[-2:] == grid


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("overrides", [{}, {"local_ensemble": False}, {"pe_frequencies": 2}])
def test_shapes_for_batch_of_one_and_three(batch, overrides):
    rep = nerpe((256, 192), keypoints=5, **SMALL, **overrides)
    field = random_field(rep, batch=batch)
    targets = rep.encode(torch.rand(batch, 5, 2) * 100, torch.ones(batch, 5))
    neighbours = 1 if overrides.get("local_ensemble") is False else 4
    queries = 2 * 2 * 8 * 6  # S^2 per cell
    assert targets.queries.shape == (batch, queries, 2)
    assert targets.values.shape == (batch, 5, queries) and targets.weights.shape == (batch, 5)
    assert field.query_neighbours(targets.queries).shape == (batch, neighbours, 5, queries)
    assert torch.isfinite(rep.loss(field, targets))
    coords, scores = rep.decode(field)
    assert coords.shape == (batch, 5, 2) and scores.shape == (batch, 5)
    assert rep.dense_heatmap(field, 10, 7).shape == (batch, 5, 10, 7)


def test_config_rejects_unknown_variants_and_inconsistent_sizes():
    with pytest.raises(ValueError, match="sampling must be one of uniform, random"):
        NerPEConfig(sampling="grid")
    with pytest.raises(ValueError, match="power of two"):
        NerPEConfig(decoding="progressive", queries_per_cell=24, progressive_start=4)
    NerPEConfig(queries_per_cell=24)  # standard decoding takes any U
    with pytest.raises(ValueError, match="short side"):
        nerpe((256, 192), cells=5)  # 5 * 192 / 256 = 3.75 cells
    with pytest.raises(ValueError, match="unknown config field"):
        nerpe(levels=3)


@pytest.mark.parametrize("size, sigma_px, samples_per_axis",
                         [((64, 64), 3.84, 4), ((128, 128), 3.84, 8), ((256, 192), 7.68, 8)])
def test_defaults_are_the_release_from_128_px_and_its_128_config_in_pixels_below(size, sigma_px, samples_per_axis):
    rep = nerpe(size)
    half_long = max(size) / 2
    assert rep.config.sigma * half_long == pytest.approx(sigma_px)
    assert rep.config.laplace_b / rep.config.sigma == pytest.approx(0.09 / 0.06)
    assert rep.config.samples_per_axis == samples_per_axis
    cell_px = max(size) / rep.config.cells
    queries_in_sigma_disk = math.pi * sigma_px**2 * samples_per_axis**2 / cell_px**2
    assert queries_in_sigma_disk == pytest.approx(11.6, abs=0.05)  # every released config's


# --- targets and sampling --------------------------------------------------------------------------------------


def test_sigma_is_isotropic_in_units_of_the_half_long_side():
    rep = nerpe((256, 192), keypoints=1)
    centre = torch.tensor([[[96.0, 128.0]]])
    field = rep.ideal_outputs(centre, torch.ones(1, 1))
    sigma_px = 0.06 * 256 / 2  # 7.68 px on both axes, though the x axis is the short one
    points = rep._normalise(torch.tensor([[[96.0 + sigma_px, 128.0], [96.0, 128.0 - sigma_px]]]))
    # float32 rounding of exp only
    torch.testing.assert_close(field.query(points), torch.full((1, 1, 2), math.exp(-0.5)), atol=1e-6, rtol=0)


def test_laplace_target_decays_with_scale_b():
    rep = nerpe((64, 64), keypoints=1, target="laplace", laplace_b=0.09)
    field = rep.ideal_outputs(torch.tensor([[[32.0, 32.0]]]), torch.ones(1, 1))
    points = rep._normalise(torch.tensor([[[32.0 + 0.09 * 32, 32.0]]]))  # b = 0.09 half-long-sides = 2.88 px
    torch.testing.assert_close(field.query(points), torch.full((1, 1, 1), math.exp(-1.0)), atol=1e-6, rtol=0)


def cell_counts(queries: torch.Tensor, rep, divisions: int) -> torch.Tensor:
    """(B, cells) number of queries in each cell of an n x n grid subdivided ``divisions`` times per axis."""
    n_h, n_w = rep.grid
    n_max = max(n_h, n_w)
    origin = torch.tensor([n_w, n_h]) / n_max
    index = torch.floor((queries + origin) * n_max * divisions / 2).long()  # (B, Q, 2)
    flat = index[..., 1] * n_w * divisions + index[..., 0]
    return torch.stack([torch.bincount(row, minlength=n_h * n_w * divisions**2) for row in flat])


def test_uniform_sampling_puts_exactly_one_query_in_each_sub_cell():
    torch.manual_seed(0)
    rep = nerpe((256, 192), sampling="uniform")
    targets = rep.encode(torch.rand(3, 3, 2) * 150, torch.ones(3, 3))
    assert (cell_counts(targets.queries, rep, divisions=8) == 1).all()


def test_random_sampling_puts_s_squared_queries_in_each_cell():
    torch.manual_seed(0)
    rep = nerpe((256, 192), sampling="random", samples_per_axis=4)
    targets = rep.encode(torch.rand(3, 3, 2) * 150, torch.ones(3, 3))
    assert (cell_counts(targets.queries, rep, divisions=1) == 16).all()
    # random, not a sub-division: some 4x4 sub-cell of some cell is empty
    assert (cell_counts(targets.queries, rep, divisions=4) == 0).any()


def test_queries_are_redrawn_every_call():
    torch.manual_seed(0)
    rep = nerpe()
    keypoints, visible = torch.rand(2, 3, 2) * 64, torch.ones(2, 3)
    first, second = rep.encode(keypoints, visible), rep.encode(keypoints, visible)
    assert not torch.equal(first.queries, second.queries)
    assert not torch.equal(first.queries[0], first.queries[1])  # and per sample


def test_targets_are_weighted_by_visibility():
    torch.manual_seed(0)
    rep = nerpe()
    keypoints = torch.tensor([[[20.0, 30.0], [40.0, 10.0], [float("nan"), 5.0]]])
    targets = rep.encode(keypoints, torch.tensor([[1.0, 0.0, 1.0]]))
    assert torch.equal(targets.weights, torch.tensor([[1.0, 0.0, 0.0]]))  # NaN counts as unlabelled
    assert targets.values[0, 0].max() > 0.5 and (targets.values[0, 1:] == 0).all()


def test_unlabelled_to_zero_regresses_unlabelled_keypoints_to_zero():
    torch.manual_seed(0)
    rep = nerpe(unlabelled_to_zero=True, **SMALL)
    keypoints = torch.tensor([[[20.0, 30.0], [40.0, 10.0], [float("nan"), 5.0]]])
    targets = rep.encode(keypoints, torch.tensor([[1.0, 0.0, 1.0]]))
    assert torch.equal(targets.weights, torch.ones(1, 3))
    assert (targets.values[0, 1:] == 0).all()
    # the unlabelled keypoints' predictions now add (y_n - 0)^2, which masking leaves out
    masking = nerpe(**SMALL)
    field = random_field(rep, batch=1)
    torch.manual_seed(1)
    zeroed = rep.loss(field, rep.encode(keypoints, torch.tensor([[1.0, 0.0, 1.0]])))
    torch.manual_seed(1)  # the same queries
    masked = masking.loss(field, masking.encode(keypoints, torch.tensor([[1.0, 0.0, 1.0]])))
    assert zeroed > masked


def test_invisible_keypoint_adds_no_loss():
    rep = nerpe(**SMALL)
    field = random_field(rep, batch=2)
    visible = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    keypoints = torch.rand(2, 3, 2) * 64
    moved = keypoints.clone()
    moved[0, 1], moved[1, 2] = torch.tensor([3.0, 60.0]), torch.tensor([float("nan"), float("inf")])
    torch.manual_seed(1)
    reference = rep.loss(field, rep.encode(keypoints, visible))
    torch.manual_seed(1)  # the same queries
    assert torch.equal(rep.loss(field, rep.encode(moved, visible)), reference)


def test_loss_of_the_ideal_field_on_its_own_targets_is_zero():
    torch.manual_seed(0)
    rep = nerpe((256, 192))
    keypoints, visible = torch.rand(2, 3, 2) * 190, torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    assert rep.loss(rep.ideal_outputs(keypoints, visible), rep.encode(keypoints, visible)) == 0


def test_loss_decreases_when_fitting_the_head():
    torch.manual_seed(0)
    rep = nerpe(keypoints=2, **SMALL)
    head = rep.build_head(16, 4)
    features = torch.randn(2, 16, 16, 16)
    targets = rep.encode(torch.tensor([[[20.0, 30.0], [44.0, 12.0]], [[50.0, 50.0], [8.0, 40.0]]]), torch.ones(2, 2))
    losses = adam_losses(rep, head, features, targets, steps=10, lr=1e-3)
    assert head.neck[0].weight.grad.abs().sum() > 0  # gradients reach the neck's first conv
    # a random head starts far from the targets; 10 Adam steps on one batch at least halve the loss (seed 0: to 0.31x)
    assert losses[-1] < 0.5 * losses[0]


# --- decoding ----------------------------------------------------------------------------------------------


@PROOF
@given(size=st.sampled_from(SIZES), target=st.sampled_from(["gaussian", "laplace"]), points=unit_points)
def test_ideal_target_decodes_within_half_a_query_step(size, target, points):
    keypoints = to_keypoints(points, size)
    rep = nerpe(size, keypoints=keypoints.shape[1], target=target)
    coords, scores = rep.decode(rep.ideal_outputs(keypoints, torch.ones(keypoints.shape[:2])))
    step = torch.tensor(query_step(rep))
    # the argmax is the grid point nearest to the keypoint on each axis; 1e-4 px absorbs float32 rounding
    assert ((coords - keypoints).abs() <= step / 2 + 1e-4).all()
    assert (scores > 0.9).all()  # the peak is sampled within half a step of the keypoint: 1.92 px sigma or more


@PROOF
@given(size=st.sampled_from(SIZES), target=st.sampled_from(["gaussian", "laplace"]), points=unit_points)
def test_progressive_decoding_agrees_with_standard_decoding_on_unimodal_maps(size, target, points):
    keypoints = to_keypoints(points, size)
    standard = nerpe(size, keypoints=keypoints.shape[1], target=target)
    progressive = nerpe(size, keypoints=keypoints.shape[1], target=target, decoding="progressive")
    field = standard.ideal_outputs(keypoints, torch.ones(keypoints.shape[:2]))
    expected, _ = standard.decode(field)
    coords, _ = progressive.decode(field)
    # within one final query step (the claim); in fact the same grid point, up to float32 rounding of ties
    assert ((coords - expected).abs() <= torch.tensor(query_step(standard)) + 1e-4).all()


@pytest.mark.parametrize("size", SIZES)
def test_progressive_decoding_uses_over_ten_times_fewer_mlp_queries(size):
    rep = nerpe(size, keypoints=17, decoding="progressive")
    standard, progressive = rep.decode_cost("standard"), rep.decode_cost()
    assert standard["mlp_evaluations"] >= 10 * progressive["mlp_evaluations"]
    assert progressive["levels"] == 4  # U = 4, 8, 16, 32


def test_progressive_decoding_starting_at_the_final_u_is_standard_decoding():
    torch.manual_seed(0)
    keypoints = torch.rand(2, 3, 2) * 64
    standard = nerpe(queries_per_cell=8)
    progressive = nerpe(queries_per_cell=8, decoding="progressive", progressive_start=8)
    field = standard.ideal_outputs(keypoints, torch.ones(2, 3))
    assert torch.equal(progressive.decode(field)[0], standard.decode(field)[0])
    assert progressive.decode_cost() == standard.decode_cost()


def test_run_also_decodes_with_the_other_decoding():
    (name, progressive), = nerpe().decoding_variants().items()
    assert name == "progressive" and progressive.config.decoding == "progressive"
    assert list(nerpe(decoding="progressive").decoding_variants()) == ["standard"]
    assert nerpe(queries_per_cell=24).decoding_variants() == {}  # 24 / 4 is no power of two


def test_run_table_shows_progressive_gflops_and_agreement_beside_the_main_gflops():
    from heatbench.runner import table_columns

    titles = list(table_columns([{"decoding_variants": ["progressive"]}]).values())
    assert titles[titles.index("GFLOPs/img") + 1] == "GFLOPs/img (progressive decoding)"
    assert "progressive = main (1 step)" in titles


def test_decode_cost_counts_each_keypoint_window():
    rep = nerpe((64, 64), keypoints=17)
    assert rep.decode_cost("standard")["query_points"] == 256 * 256
    assert rep.decode_cost("standard")["mlp_evaluations"] == 4 * 256 * 256
    # level 0: (8 * 4)^2 points; then 3 levels of one 9 x 9 window per keypoint
    assert rep.decode_cost("progressive")["query_points"] == 32 * 32 + 3 * 17 * 81
    single = nerpe((64, 64), keypoints=17, local_ensemble=False).decode_cost("standard")
    assert single["mlp_evaluations"] == single["query_points"]
    macs = (256 + 2) * 256 + 256 * 256 + 256 * 128 + 128 * 128 + 128 * 128 + 128 * 17
    assert rep.decode_cost("standard")["mlp_macs"] == 4 * 256 * 256 * macs


@PROOF
@given(points=unit_points)
def test_flip_merged_ideal_outputs_decode_like_the_plain_ideal_outputs(points):
    size = (256, 192)
    keypoints = to_keypoints(points, size)
    count = keypoints.shape[1]
    pairs = [(0, 1), (2, 3)][: count // 2]
    rep = nerpe(size, keypoints=count)
    visible = torch.ones(1, count)
    permutation = torch.arange(count)
    for left, right in pairs:
        permutation[left], permutation[right] = right, left
    flipped = keypoints[:, permutation].clone()
    flipped[..., 0] = size[1] - flipped[..., 0]
    merged = rep.merge_flipped(rep.ideal_outputs(keypoints, visible),
                               rep.flip_back(rep.ideal_outputs(flipped, visible), pairs))
    # the mirror x_n -> -x_n is exact, so both decodes pick the same grid point (1e-4 px: float32 rounding)
    torch.testing.assert_close(rep.decode(merged)[0], rep.decode(rep.ideal_outputs(keypoints, visible))[0],
                               atol=1e-4, rtol=0)


def test_flipping_a_learned_field_back_twice_is_the_identity():
    rep = nerpe(**SMALL)
    field = random_field(rep)
    pairs = [(0, 2)]
    twice = rep.flip_back(rep.flip_back(field, pairs), pairs)
    torch.testing.assert_close(rep.dense_heatmap(twice, 16, 16), rep.dense_heatmap(field, 16, 16))


@pytest.mark.parametrize("kind", ["gaussian target", "laplace target", "learned", "flipped", "flip-merged"])
def test_every_field_answers_a_grid_query_as_the_same_points_queried_one_by_one(kind):
    rep = nerpe((256, 192), keypoints=4, target="laplace" if kind == "laplace target" else "gaussian", **SMALL)
    torch.manual_seed(0)
    keypoints, visible = torch.rand(2, 4, 2) * torch.tensor([192.0, 256.0]), torch.tensor([[1.0, 1, 0, 1]] * 2)
    target, learned = rep.ideal_outputs(keypoints, visible), random_field(rep)
    field = {"learned": learned, "flipped": rep.flip_back(learned, [(0, 3)]),
             "flip-merged": rep.merge_flipped(target, rep.flip_back(learned, [(0, 3)]))}.get(kind, target)
    xs, ys = rep._grid_axes(9, 7, "cpu")
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    one_by_one = field.query(torch.stack([grid_x, grid_y], dim=-1).view(1, -1, 2)).view(2, 4, 9, 7)
    # the Gaussian grid is a product of two exps, the points' one exp of a sum: a few float32 ulp apart
    torch.testing.assert_close(field.query_grid(xs, ys), one_by_one, atol=1e-6, rtol=0)


def border_and_inside_jumps(rep, field, samples_per_cell=64) -> tuple[torch.Tensor, torch.Tensor]:
    """Largest |change| of the map between neighbouring samples along x: across cell borders, and elsewhere."""
    width = rep.grid[1] * samples_per_cell
    heatmap = rep.dense_heatmap(field, 13, width)  # 13 rows: off the cell centres and borders
    jumps = (heatmap[..., 1:] - heatmap[..., :-1]).abs()  # (B, K, 13, width - 1)
    across = (torch.arange(1, width) % samples_per_cell) == 0  # pair (j - 1, j) straddles a border
    return jumps[..., across].max(), jumps[..., ~across].max()


def test_local_ensemble_makes_the_map_continuous_across_cell_borders():
    rep = nerpe(keypoints=4)
    across, inside = border_and_inside_jumps(rep, random_field(rep))
    assert across <= inside


def test_without_local_ensemble_the_map_jumps_at_cell_borders():
    rep = nerpe(keypoints=4, local_ensemble=False)
    across, inside = border_and_inside_jumps(rep, random_field(rep))
    # the nearest-cell map changes cell feature at a border but moves r by only 1/32 half-cells inside one
    assert across > 10 * inside


def test_bfloat16_features_are_queried_in_float32():
    rep = nerpe(**SMALL)
    field = random_field(rep)
    half = LearnedField(field.features.bfloat16(), field.mlp, field.local_ensemble)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        coords, scores = rep.decode(half)
        heatmap = rep.dense_heatmap(half, 8, 8)
    assert coords.dtype == scores.dtype == heatmap.dtype == torch.float32
    # the same features, cast to float32 by hand, give the same map: the query really ran in float32
    reference = LearnedField(field.features.bfloat16().float(), field.mlp, field.local_ensemble)
    torch.testing.assert_close(heatmap, rep.dense_heatmap(reference, 8, 8))


# --- pictures ----------------------------------------------------------------------------------------------


def test_render_heatmaps_writes_one_picture_per_resolution(tmp_path):
    rep = nerpe((256, 192), keypoints=2, **SMALL)
    paths = render_heatmaps(rep, random_field(rep, batch=1), keypoint=1, resolutions=[8, 32], out_dir=tmp_path,
                            image=torch.randn(3, 256, 192))
    assert [path.name for path in paths] == ["nerpe_k1_8x6.png", "nerpe_k1_32x24.png"]
    assert all(Image.open(path).size[0] > 100 for path in paths)


@pytest.mark.parametrize("outputs, shape", [
    (torch.linspace(0, 1, 2 * 16 * 12).view(1, 2, 16, 12), "16x12"),                 # heatmaps
    ((torch.linspace(-1, 1, 768).view(1, 2, 384), torch.linspace(1, -1, 1024).view(1, 2, 512)),
     "512x384"),                                                                      # SimCC-like x, y vectors
])
def test_render_native_draws_discrete_outputs_at_their_resolution(tmp_path, outputs, shape):
    rep = nerpe((256, 192), keypoints=2)
    path = render_native(rep, outputs, keypoint=0, out_dir=tmp_path)
    assert path.name == f"nerpe_k0_{shape}.png" and path.exists()
