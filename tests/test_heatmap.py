"""Specification of the heatmap representation (heatbench/representations/heatmap.py) and, on its rows, of
the codec-floor table (heatbench/floor.py)."""
import csv
import json
import math
from typing import get_args

import pytest
import torch

from heatbench import build_representation, ops
from heatbench.coords import flip_horizontal
from heatbench.decoders import DECODERS
from heatbench.coords import interior_margin_px
from heatbench.floor import COLUMNS, floor_error, floor_rows, variants, write_floor_table
from heatbench.representation import ConfigError
from heatbench.representations.heatmap import DecoderName, Heatmap, HeatmapConfig, HeatmapTargets

K = 3
ENCODINGS = ["msra", "unbiased", "udp"]


def make(input_size=(64, 64), **overrides) -> Heatmap:
    return build_representation("heatmap", input_size, K, **overrides)


# --- configuration ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("input_size, sigma", [((64, 64), 1), ((128, 128), 1), ((256, 192), 2), ((256, 256), 2),
                                               ((384, 288), 3)])
def test_default_sigma_follows_the_methods_table(input_size, sigma):
    assert Heatmap.default_config(input_size) == HeatmapConfig("unbiased", "dark", sigma, 4)


def test_decoder_field_offers_exactly_the_registered_decoders():
    assert get_args(DecoderName) == tuple(DECODERS)


@pytest.mark.parametrize("field, value", [("encoding", "gaussian"), ("decoder", "soft_argmax"), ("sigma", 0.5),
                                          ("sigma", float("nan")), ("sigma", "2"), ("stride", 0), ("stride", 4.0)])
def test_invalid_config_field_is_rejected_by_name(field, value):
    with pytest.raises(ConfigError, match=field):
        make(**{field: value})


def test_input_not_divisible_by_the_stride_is_rejected():
    with pytest.raises(ConfigError, match="stride"):
        make((66, 64))


def test_head_is_a_1x1_conv_at_the_feature_stride_and_refuses_another():
    representation = make()
    head = representation.build_head(256, 4)
    assert head(torch.zeros(2, 256, 16, 16)).shape == (2, K, 16, 16)
    with pytest.raises(ValueError, match="stride"):
        representation.build_head(256, 8)


# --- encodings -------------------------------------------------------------------------------------------


def gaussian(distance_sq, sigma):
    return math.exp(-distance_sq / (2 * sigma**2))


def test_cells_are_centred_at_half_strides_except_on_the_udp_grid():
    # Cell i is centred at canonical (i + 0.5) * 4; on the UDP grid cell 0 sits on the first pixel centre
    # (0.5) and the last cell on the last one (W - 0.5).
    centre_of_cell_2 = torch.tensor([[[10.0, 10.0]]]).expand(1, K, 2)
    maps = make(encoding="unbiased").encode(centre_of_cell_2, torch.ones(1, K)).heatmaps
    assert maps[0, 0, 2, 2] == 1.0
    corners = torch.tensor([[[0.5, 0.5], [63.5, 63.5], [0.5, 63.5]]])
    maps = make(encoding="udp").encode(corners, torch.ones(1, K)).heatmaps
    assert maps[0, 0, 0, 0] == 1.0 and maps[0, 1, 15, 15] == 1.0 and maps[0, 2, 15, 0] == 1.0


def test_msra_target_is_a_gaussian_at_the_rounded_centre_cut_to_its_window():
    keypoint = torch.tensor([[[(5.3 + 0.5) * 4, (7.6 + 0.5) * 4]]]).expand(1, K, 2)  # u = (5.3, 7.6)
    maps = make(encoding="msra").encode(keypoint, torch.ones(1, K)).heatmaps[0, 0]
    assert maps[8, 5] == 1.0  # round(u) = (5, 8)
    assert maps[8, 8] == pytest.approx(gaussian(9, 1.0)) and maps[8, 9] == 0.0  # 3 sigma = 3 cells
    assert maps[11, 2] == pytest.approx(gaussian(18, 1.0)) and maps[4, 5] == 0.0


def test_unbiased_target_is_centred_on_the_float_keypoint_over_the_whole_map():
    keypoint = torch.tensor([[[(5.3 + 0.5) * 4, (7.6 + 0.5) * 4]]]).expand(1, K, 2)
    maps = make(encoding="unbiased").encode(keypoint, torch.ones(1, K)).heatmaps[0, 0]
    assert maps[8, 5] == pytest.approx(gaussian(0.3**2 + 0.4**2, 1.0))
    assert maps[0, 15] == pytest.approx(gaussian(9.7**2 + 7.6**2, 1.0), abs=0, rel=1e-4)


def test_udp_target_is_centred_on_the_float_keypoint_within_the_rounded_window():
    representation = make(encoding="udp")
    stride = 63 / 15
    keypoint = torch.tensor([[[0.5 + 5.3 * stride, 0.5 + 7.6 * stride]]]).expand(1, K, 2)
    maps = representation.encode(keypoint, torch.ones(1, K)).heatmaps[0, 0]
    assert maps[8, 5] == pytest.approx(gaussian(0.3**2 + 0.4**2, 1.0), rel=1e-5)
    assert maps[8, 8] == pytest.approx(gaussian(2.7**2 + 0.4**2, 1.0), rel=1e-5) and maps[8, 9] == 0.0


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_weight_is_zero_only_when_the_window_misses_the_map(encoding):
    representation = make(encoding=encoding)
    # 3 sigma = 3 cells = 12 px: a keypoint 8 px left of the image still reaches column 0, one 20 px left not.
    keypoints = torch.tensor([[[-8.0, 30.0], [-20.0, 30.0], [30.0, 90.0]]])
    targets = representation.encode(keypoints, torch.ones(1, K))
    assert targets.weights.tolist() == [[1.0, 0.0, 0.0]]
    assert targets.heatmaps[0, 0].max() > 0 and (targets.heatmaps[0, 1:] == 0).all()


@pytest.mark.parametrize("sigma", [0.1, 1.0, 1.7])
def test_the_weight_says_whether_the_window_holds_a_cell_also_at_its_edges(sigma):
    """gaussian_heatmaps decides the weight from the cell nearest the window's centre; it must agree with
    the (B, K, count) windows it returns, whose cells are tested one by one. With sigma 0.1 the window
    (radius 0.3) can fall between two cells inside the map."""
    height, width, radius = 16, 12, 3 * sigma
    edges = torch.tensor([-radius, width - 1 + radius, height - 1 + radius, 5.5, 5.0 + radius])
    middles = torch.cat([edges, torch.nextafter(edges, edges + 1), torch.nextafter(edges, edges - 1),
                         torch.linspace(-6.0, 22.0, 57)])
    window_centre = torch.cartesian_prod(middles, middles).unsqueeze(0)  # (1, N, 2) (x, y)
    _, (window_x, window_y), weight = ops.gaussian_heatmaps(window_centre, (height, width), sigma,
                                                            torch.ones(window_centre.shape[:2]))
    assert torch.equal(weight.bool(), window_x.any(dim=-1) & window_y.any(dim=-1))
    assert 0 < weight.sum() < weight.numel()


def test_unlabelled_and_nan_keypoints_add_no_loss():
    representation = make()
    keypoints = torch.tensor([[[30.0, 30.0], [float("nan"), 5.0], [20.0, 40.0]]])
    targets = representation.encode(keypoints, torch.tensor([[1.0, 1.0, 0.0]]))
    assert targets.weights.tolist() == [[1.0, 0.0, 0.0]]
    outputs = targets.heatmaps.clone()
    outputs[0, 1:] = torch.randn(2, 16, 16)
    assert representation.loss(outputs, targets) == 0


def test_loss_is_half_the_mean_squared_error_of_the_weighted_maps():
    torch.manual_seed(0)
    outputs, maps = torch.rand(2, K, 16, 16), torch.rand(2, K, 16, 16)
    weights = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    per_joint = [0.5 * ((outputs[:, k] * weights[:, k, None, None] - maps[:, k] * weights[:, k, None, None]) ** 2)
                 .mean() for k in range(K)]  # HRNet's JointsMSELoss, joint by joint
    loss = make().loss(outputs, HeatmapTargets(maps * weights[..., None, None], weights))
    torch.testing.assert_close(loss, torch.stack(per_joint).mean())


def test_encode_follows_the_keypoints_dtype():
    targets = make().encode(torch.full((1, K, 2), 30.0, dtype=torch.float64), torch.ones(1, K))
    assert targets.heatmaps.dtype == torch.float64 and targets.weights.dtype == torch.float64


# --- decoding and flip -----------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides", variants(Heatmap), ids=lambda o: f"{o['encoding']}-{o['decoder']}")
def test_keypoints_on_cell_centres_round_trip_exactly_in_canonical_pixels(overrides):
    representation = make((256, 192), **overrides)
    stride_x, stride_y = representation.output_stride_px
    cells = torch.tensor([[[10, 20], [25, 31], [40, 44]]], dtype=torch.float32)
    keypoints = representation.origin_px + cells * torch.tensor([stride_x, stride_y])
    decoded, scores = representation.decode(representation.ideal_outputs(keypoints, torch.ones(1, K)))
    # A cell-centred Gaussian is symmetric, so every decoder lands on it; float32 rounding only.
    torch.testing.assert_close(decoded, keypoints, rtol=0, atol=1e-4)
    torch.testing.assert_close(scores, torch.ones(1, K))


@pytest.mark.parametrize("encoding", ["unbiased", "udp"])
def test_flip_back_of_the_mirrored_targets_is_the_target_with_no_shift(encoding):
    # The mirror x -> W - x is exactly the column reversal i -> w - 1 - i on both grids: no shift_heatmap.
    representation = make((256, 192), encoding=encoding)
    torch.manual_seed(0)
    keypoints = torch.rand(4, K, 2) * torch.tensor([192.0, 256.0])
    perm = ops.flip_permutation(K, [(0, 2)])
    mirrored = flip_horizontal(keypoints, 192)[:, perm]
    flipped_back = representation.flip_back(representation.ideal_outputs(mirrored, torch.ones(4, K)), [(0, 2)])
    # float32 rounding of W - x and of the Gaussian's exponent, values <= 1
    torch.testing.assert_close(flipped_back, representation.ideal_outputs(keypoints, torch.ones(4, K)),
                               rtol=0, atol=1e-5)


def test_floor_tolerance_is_stated_per_configuration():
    diagonal = 4 * math.sqrt(2)
    slack = 1e-3
    assert make(encoding="msra", decoder="dark").floor_tolerance_px == pytest.approx(0.52 * diagonal + slack)
    assert make(decoder="argmax").floor_tolerance_px == pytest.approx(0.5 * diagonal + slack)
    assert make(decoder="quarter_offset").floor_tolerance_px == pytest.approx(0.25 * diagonal + slack)
    assert make(decoder="dark").floor_tolerance_px == pytest.approx(0.02 * diagonal + slack)
    # sigma 2 at 64x64 needs 5 cells from the edge, the interior leaves 3: only the step guard bounds it
    assert make(decoder="dark", sigma=2).floor_tolerance_px == pytest.approx(1.5 * diagonal + slack)
    udp_diagonal = math.hypot(191 / 47, 255 / 63)
    assert make((256, 192), encoding="udp").floor_tolerance_px == pytest.approx(0.02 * udp_diagonal + slack)


# --- the codec-floor table, on the heatmap rows ----------------------------------------------------------


@pytest.fixture(scope="module")
def heatmap_rows():
    return floor_rows(["heatmap"], [(64, 64), (256, 192)], n=2048, num_keypoints=17)


def _row(rows, variant, res, region="interior"):
    return next(r for r in rows if r["variant"] == variant and r["res"] == res and r["region"] == region)


def test_floor_rows_cover_every_variant_resolution_and_region(heatmap_rows):
    assert len(heatmap_rows) == 12 * 2 * 2
    assert {row["variant"] for row in heatmap_rows} == {f"encoding={e},decoder={d}" for e in ENCODINGS
                                                         for d in DECODERS}
    assert {row["res"] for row in heatmap_rows} == {"64x64", "256x192"}
    assert all(set(row) == set(COLUMNS) and row["n"] == 2048 for row in heatmap_rows)


@pytest.mark.parametrize("res", ["64x64", "256x192"])
def test_msra_argmax_floor_is_about_1_5_px_at_stride_4(heatmap_rows, res):
    # Uniform per-axis rounding error in [-2, 2] px has mean Euclidean norm 1.53 px; 2048 evenly spread
    # keypoints estimate it to well under 1 %.
    assert _row(heatmap_rows, "encoding=msra,decoder=argmax", res)["mean_px"] == pytest.approx(1.53, abs=0.05)


@pytest.mark.parametrize("res", ["64x64", "256x192"])
@pytest.mark.parametrize("variant", ["encoding=unbiased,decoder=dark", "encoding=unbiased,decoder=udp_dark",
                                     "encoding=udp,decoder=dark", "encoding=udp,decoder=udp_dark"])
def test_float_centred_maps_with_dark_decoding_sit_far_below_0_1_px(heatmap_rows, res, variant):
    row = _row(heatmap_rows, variant, res)
    assert row["max_px"] < 0.1 and row["mean_px"] < 0.03  # measured mean <= 0.026 (DARK, sigma 1)


def test_no_decoder_is_biased_in_the_interior(heatmap_rows):
    # Scrambled Sobol keypoints average the quantisation error out like 1/n: measured <= 0.006 px at
    # n = 2048 (i.i.d. random ones would leave ~0.025 px of sampling noise on the argmax rows, more than
    # the 0.01 px claim).
    interior_rows = [row for row in heatmap_rows if row["region"] == "interior"]
    assert max(max(abs(row["bias_x_px"]), abs(row["bias_y_px"])) for row in interior_rows) < 0.01


def test_floor_error_of_a_configured_representation_is_its_interior_mean():
    representation = make((64, 64), encoding="msra", decoder="argmax")
    assert floor_error(representation, n=1024) == pytest.approx(1.53, abs=0.05)


def test_interior_margin_is_three_stride_4_cells_or_an_eighth_of_the_side():
    assert [interior_margin_px(side) for side in (64, 128, 192, 256)] == [12, 16, 24, 32]


def test_floor_table_is_written_whole_with_the_stated_columns(heatmap_rows, tmp_path):
    out_dir = tmp_path / "floor"
    write_floor_table(heatmap_rows, out_dir)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["floor"]  # no staging directory left over
    with open(out_dir / "table.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == COLUMNS and len(list(reader)) == len(heatmap_rows)
    assert json.loads((out_dir / "table.json").read_text())["rows"] == heatmap_rows
    assert "| representation" in (out_dir / "table.md").read_text()


def test_a_failed_floor_table_write_keeps_the_previous_table(heatmap_rows, tmp_path):
    out_dir = tmp_path / "floor"
    write_floor_table(heatmap_rows[:1], out_dir)
    previous = {path.name: path.read_text() for path in out_dir.iterdir()}
    broken = heatmap_rows[:1] + [{"representation": "broken"}]  # a row without the columns fails mid-write
    with pytest.raises(KeyError):
        write_floor_table(broken, out_dir)
    assert {path.name: path.read_text() for path in out_dir.iterdir()} == previous
    assert sorted(path.name for path in tmp_path.iterdir()) == ["floor"]
