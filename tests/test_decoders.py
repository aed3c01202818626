"""Specification of the heatmap decoders (heatbench/decoders): argmax, quarter offset, DARK, UDP-DARK, 1-D DARK.

Coordinates are heatmap index units, cell (i, j) centred at (i, j).
"""
import math
import multiprocessing

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from heatbench.decoders import DECODERS, argmax as argmax_module, get_decoder
from heatbench.decoders.argmax import Peak, argmax_2d, find_peak, max_last, take_2d
from heatbench.decoders.dark import blur_kernel_size, dark_1d, log_modulated, modulate, refine

NAMES = list(DECODERS)
SETTINGS = dict(deadline=None, derandomize=True, database=None)


def gaussian_maps(centres: torch.Tensor, size=(16, 16), sigma=1.0, dtype=torch.float32) -> torch.Tensor:
    """(B, K, H, W) peak-1 Gaussians at (B, K, 2) float centres (x, y) in index units."""
    height, width = size
    xs = torch.arange(width, dtype=dtype)
    ys = torch.arange(height, dtype=dtype)
    dx2 = (xs - centres[..., 0:1].to(dtype)) ** 2  # (B, K, W)
    dy2 = (ys - centres[..., 1:2].to(dtype)) ** 2  # (B, K, H)
    return torch.exp(-(dy2.unsqueeze(-1) + dx2.unsqueeze(-2)) / (2 * sigma**2))


def rotated_gaussian(centre, size=(16, 16), deviations=(1.0, 0.7), angle=0.5) -> torch.Tensor:
    """(1, 1, H, W) anisotropic Gaussian whose axes are turned by ``angle``: a log-map with a cross term."""
    height, width = size
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
                            indexing="ij")
    dx, dy = xs - centre[0], ys - centre[1]
    cos, sin = math.cos(angle), math.sin(angle)
    along, across = cos * dx + sin * dy, -sin * dx + cos * dy
    return torch.exp(-(along**2 / deviations[0] ** 2 + across**2 / deviations[1] ** 2) / 2)[None, None]


# --- the shared pieces -----------------------------------------------------------------------------------


def test_argmax_2d_returns_the_cell_and_value_of_each_maximum():
    maps = torch.zeros(2, 3, 5, 7)
    maps[1, 2, 3, 6] = 2.5
    indices, values = argmax_2d(maps)
    assert indices[1, 2].tolist() == [6, 3] and values[1, 2] == 2.5
    assert indices.dtype == torch.long and indices.shape == (2, 3, 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_max_last_is_torch_max_with_its_first_index_on_ties_and_nans(dtype):
    values = torch.randint(0, 4, (3, 5, 40), generator=torch.Generator().manual_seed(0)).to(dtype)  # many ties
    values[1, 2, 7] = values[2, 0, 3] = values[2, 0, 9] = math.nan
    for case in (values, values.transpose(0, 1)):  # contiguous and not
        maximum, index = max_last(case)
        expected_maximum, expected_index = case.max(dim=-1)
        assert torch.equal(index, expected_index)
        torch.testing.assert_close(maximum, expected_maximum, equal_nan=True)


@pytest.fixture
def split_argmax(monkeypatch):
    """max_last's NumPy argmax split over three threads whatever the input's size; yields the (pid, workers)
    keys of the thread pools it asked for."""
    monkeypatch.setattr(argmax_module, "_SPLIT_ARGMAX_MIN_VALUES", 0)
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    splits, thread_pool = [], argmax_module._thread_pool
    monkeypatch.setattr(argmax_module, "_thread_pool", lambda *key: splits.append(key) or thread_pool(*key))
    yield splits
    torch.set_num_threads(threads)


def test_max_last_split_over_threads_is_torch_max_with_its_first_index_on_ties_and_nans(split_argmax):
    values = torch.randint(0, 4, (7, 40), generator=torch.Generator().manual_seed(0)).float()  # 7 rows: 2, 2, 3
    values[1, 2] = values[6, 3] = values[6, 9] = math.nan  # in the first part and twice in the last
    maximum, index = max_last(values.view(7, 1, 40))
    expected_maximum, expected_index = values.max(dim=-1)
    assert split_argmax and torch.equal(index.view(7), expected_index)
    torch.testing.assert_close(maximum.view(7), expected_maximum, equal_nan=True)


def _split_argmax_in_child(results):
    results.put(max_last(torch.arange(12.0).view(4, 3))[1].tolist())


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_max_last_split_over_threads_also_works_in_a_forked_child(split_argmax):
    max_last(torch.zeros(4, 3))  # the parent's pool exists, and its threads are not in the child
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=_split_argmax_in_child, args=(results,))
    child.start()
    child.join(timeout=30)
    if child.is_alive():
        child.kill()
    assert child.exitcode == 0 and results.get(timeout=1) == [2, 2, 2, 2]


def test_take_2d_reads_cells_and_clamps_to_the_edge():
    maps = torch.arange(12.0).view(1, 1, 3, 4)  # value = 4 y + x
    x = torch.tensor([[[0, 3, -1, 5]]])
    y = torch.tensor([[[0, 2, 1, -3]]])
    assert take_2d(maps, x, y).tolist() == [[[0.0, 11.0, 4.0, 3.0]]]


def test_get_decoder_names_the_known_decoders_for_an_unknown_name():
    assert get_decoder("dark") is DECODERS["dark"]
    with pytest.raises(ValueError, match="argmax, quarter_offset, dark, udp_dark"):
        get_decoder("soft")


@pytest.mark.parametrize("sigma, size", [(2, 11), (3, 17), (1, 3), (0.4, 1), (6, 37)])
def test_blur_kernel_matches_the_dark_configs_and_is_odd(sigma, size):
    # 11 for sigma 2 and 17 for sigma 3 are the DARK configs' kernels; 37 for sigma 6 is mmpose SimCC's.
    assert blur_kernel_size(sigma) == size


def test_modulation_is_a_zero_padded_blur_rescaled_to_the_original_maximum():
    torch.manual_seed(0)
    maps = torch.rand(2, 3, 9, 12)
    sigma, size = 2.0, 11
    deviation = 0.3 * ((size - 1) / 2 - 1) + 0.8  # OpenCV's deviation for an 11-tap kernel: 2.0
    taps = torch.exp(-(torch.arange(size) - size // 2) ** 2 / (2 * deviation**2))
    taps = taps / taps.sum()
    flat = maps.view(-1, 1, 9, 12)
    blurred = torch.nn.functional.conv2d(flat, taps.view(1, 1, 1, -1), padding=(0, size // 2))
    blurred = torch.nn.functional.conv2d(blurred, taps.view(1, 1, -1, 1), padding=(size // 2, 0)).view(maps.shape)
    expected = blurred * (maps.amax(dim=(-2, -1)) / blurred.amax(dim=(-2, -1)))[..., None, None]
    # float32 sums of ~100 terms of order 1
    torch.testing.assert_close(modulate(maps, sigma), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("low, high", [(1e-10, math.inf), (1e-3, 50.0)])  # DARK's and UDP-DARK's clamps
@pytest.mark.parametrize("vertical", [True, False])
@pytest.mark.parametrize("peak_height", ["one", "near_low", "above_high"])  # where the clamp acts, and where not
def test_window_log_modulation_is_the_full_one_up_to_a_constant_per_map(low, high, vertical, peak_height):
    amplitude = {"one": 1.0, "near_low": 3 * low, "above_high": 80.0}[peak_height]
    generator = torch.Generator().manual_seed(0)
    centres = torch.rand(3, 4, 2, generator=generator) * torch.tensor([13.0, 10.0])  # borders included
    maps = amplitude * (gaussian_maps(centres, size=(10, 13), sigma=2.0)
                        + 0.2 * torch.randn(3, 4, 10, 13, generator=generator))
    stencil = torch.tensor([[0, 1, -1, 0, 0, 2, -2, 1, -1], [0, 0, 0, 1, -1, 0, 0, 1, -1]])
    stencil = stencil if vertical else stencil * torch.tensor([[1], [0]])
    peak = find_peak(maps)
    x, y = peak.index.unbind(-1)
    full = modulate(maps, 2.0, vertical).clamp(low, high).log()
    expected = take_2d(full, x.unsqueeze(-1) + stencil[0], y.unsqueeze(-1) + stencil[1])
    windowed = log_modulated(maps, peak, 2.0, stencil, low, high, vertical)
    # float32 sums of ~100 terms in a different order, then logged
    torch.testing.assert_close(windowed - windowed[..., :1], expected - expected[..., :1], rtol=0, atol=1e-4)


def test_refinement_discards_steps_longer_than_one_cell():
    peak = Peak(torch.zeros(1, 3, 2, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long),
                torch.full((1, 3, 2), 4.0), torch.ones(1, 3), torch.ones(1, 3, dtype=torch.bool))
    step = torch.tensor([[[0.4, -0.9], [1.5, 0.0], [float("nan"), 0.0]]])
    refined = refine(peak, step, torch.ones(1, 3, dtype=torch.bool))
    torch.testing.assert_close(refined, torch.tensor([[[4.4, 3.1], [4.0, 4.0], [4.0, 4.0]]]))


# --- argmax and quarter offset ---------------------------------------------------------------------------


@pytest.mark.parametrize("fill", [0.0, 0.7, -2.0])
def test_argmax_flat_map_scores_zero_at_centre(fill):
    coords, scores = DECODERS["argmax"](torch.full((1, 2, 6, 9), fill))
    assert coords.tolist() == [[[4.0, 2.5], [4.0, 2.5]]] and scores.tolist() == [[0.0, 0.0]]


def test_argmax_peak_in_the_first_cell_is_found_and_a_flat_map_beside_it_is_not():
    maps = torch.full((1, 2, 6, 9), 0.7)
    maps[0, 0] = 0.1
    maps[0, 0, 0, 0] = 0.9  # maximum in the first cell, where a flat map's maximum also lies
    coords, scores = DECODERS["argmax"](maps)
    assert coords.tolist() == [[[0.0, 0.0], [4.0, 2.5]]] and scores.tolist() == [[pytest.approx(0.9), 0.0]]


def test_argmax_non_positive_peak_scores_zero_at_centre():
    maps = torch.full((1, 1, 5, 5), -3.0)
    maps[0, 0, 1, 1] = -0.5
    coords, scores = DECODERS["argmax"](maps)
    assert coords.tolist() == [[[2.0, 2.0]]] and scores.tolist() == [[0.0]]


def test_quarter_offset_moves_a_quarter_cell_towards_the_larger_neighbour():
    centres = torch.tensor([[[6.3, 7.8], [9.0, 5.0]]])  # the second sits on a cell: no neighbour is larger
    coords, scores = DECODERS["quarter_offset"](gaussian_maps(centres))
    assert coords.tolist() == [[[6.25, 7.75], [9.0, 5.0]]]
    torch.testing.assert_close(scores, gaussian_maps(centres).amax(dim=(-2, -1)))


@pytest.mark.parametrize("centre, expected", [
    ((1.3, 7.0), (1.0, 7.0)), ((7.0, 1.3), (7.0, 1.0)),  # argmax 1 has both neighbours, yet is left alone
    ((14.3, 7.0), (14.25, 7.0)), ((7.0, 14.3), (7.0, 14.25)),  # W - 2 = 14 is offset
    ((14.7, 7.0), (15.0, 7.0)),  # the last cell is left alone
])
def test_quarter_offset_keeps_hrnet_border_condition(centre, expected):
    # HRNet offsets only when 1 < x < W - 1 and 1 < y < H - 1, both axes together.
    coords, _ = DECODERS["quarter_offset"](gaussian_maps(torch.tensor([[centre]])))
    assert coords.tolist() == [[list(expected)]]


# --- DARK and UDP-DARK -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["dark", "udp_dark"])
def test_dark_recovers_quarter_pixel_shift(name):
    centres = torch.tensor([[[7.25, 8.75], [6.75, 6.25]]])
    coords, _ = DECODERS[name](gaussian_maps(centres, sigma=2.0), sigma=2.0)
    # The 11-tap blur is not exactly Gaussian: measured < 5e-4 cells at sigma 2, bound 1e-3.
    torch.testing.assert_close(coords, centres, rtol=0, atol=1e-3)


@pytest.mark.parametrize("name", ["dark", "udp_dark"])
def test_newton_step_is_exact_on_a_rotated_gaussian_without_blur(name):
    # sigma 0.4 gives a 1-tap kernel, i.e. no blur; the log-map is then exactly quadratic with a cross term,
    # and both stencils (step 2 for DARK, step 1 and the seven-point d_xy for UDP-DARK) are exact on it.
    centre = (7.3, 8.6)
    coords, _ = DECODERS[name](rotated_gaussian(centre), sigma=0.4)
    # float64 maps; UDP-DARK's eps * I regularisation moves the step by ~eps / |d_xx| ~ 1e-7 cells.
    torch.testing.assert_close(coords, torch.tensor([[centre]], dtype=torch.float64), rtol=0, atol=1e-6)


@pytest.mark.parametrize("x", [1.2, 13.8])
def test_dark_keeps_the_argmax_where_its_stencil_leaves_the_map(x):
    # argmax 1 and W - 2 = 14 fail 1 < x < W - 2; UDP-DARK's edge padding refines there instead.
    maps = gaussian_maps(torch.tensor([[[x, 7.0]]]), sigma=1.0)
    assert DECODERS["dark"](maps, sigma=1.0)[0][0, 0, 0] == round(x)
    assert DECODERS["udp_dark"](maps, sigma=1.0)[0][0, 0, 0] != round(x)


@pytest.mark.parametrize("name", NAMES)
def test_every_decoder_treats_each_map_on_its_own(name):
    torch.manual_seed(0)
    maps = gaussian_maps(torch.rand(3, 4, 2) * 10 + 3, sigma=1.5) + 0.05 * torch.rand(3, 4, 16, 16)
    coords, scores = DECODERS[name](maps, 1.5)
    one_by_one = [DECODERS[name](maps[b:b + 1, k:k + 1], 1.5) for b in range(3) for k in range(4)]
    torch.testing.assert_close(coords, torch.cat([c for c, _ in one_by_one]).view(3, 4, 2))
    torch.testing.assert_close(scores, torch.cat([s for _, s in one_by_one]).view(3, 4))


@pytest.mark.parametrize("name", NAMES)
def test_every_decoder_follows_the_input_dtype(name):
    maps = gaussian_maps(torch.tensor([[[6.4, 7.2]]]), dtype=torch.float64)
    coords, scores = DECODERS[name](maps, 1.0)
    assert coords.dtype == torch.float64 and scores.dtype == torch.float64


def degenerate_maps(kind: str, value: float, seed: int, size=(12, 10)) -> torch.Tensor:
    height, width = size
    generator = torch.Generator().manual_seed(seed)
    if kind == "zeros":
        return torch.zeros(2, 3, height, width)
    if kind == "constant":
        return torch.full((2, 3, height, width), value)
    if kind == "noise":
        return value * torch.randn(2, 3, height, width, generator=generator)
    maps = torch.zeros(2, 3, height, width)  # one-cell peaks on the border cells
    rows = torch.randint(0, height, (2, 3), generator=generator)
    cols = torch.randint(0, 2, (2, 3), generator=generator) * (width - 1)
    maps.view(6, height, width)[torch.arange(6), rows.flatten(), cols.flatten()] = abs(value) + 1
    return maps


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=25, **SETTINGS)
@given(kind=st.sampled_from(["zeros", "constant", "noise", "border"]),
       value=st.floats(-1e4, 1e4, allow_nan=False), seed=st.integers(0, 2**31), sigma=st.floats(0.5, 4))
def test_decoders_return_finite_values_on_degenerate_maps(name, kind, value, seed, sigma):
    coords, scores = DECODERS[name](degenerate_maps(kind, value, seed), sigma)
    assert torch.isfinite(coords).all() and torch.isfinite(scores).all()
    assert ((coords >= -1.5) & (coords <= torch.tensor([10.5, 12.5]))).all()  # the one-cell guard's reach


# --- 1-D DARK (SimCC) ------------------------------------------------------------------------------------


def test_dark_1d_recovers_a_sub_bin_shift_of_a_simcc_label():
    bins = torch.arange(384.0)
    centres = torch.tensor([[100.3, 200.7], [37.5, 290.05]])
    sigma = 6.0  # mmpose's SimCC sigma in bins; kernel 37
    labels = torch.exp(-(bins - centres.unsqueeze(-1)) ** 2 / (2 * sigma**2)) / (sigma * math.sqrt(2 * math.pi))
    coords, scores = dark_1d(labels, sigma)
    # 1-D DARK is exact up to the 37-tap blur's deviation from a Gaussian: measured < 1e-4 bins, bound 1e-3.
    torch.testing.assert_close(coords, centres, rtol=0, atol=1e-3)
    torch.testing.assert_close(scores, labels.amax(dim=-1))


def test_dark_1d_flat_vector_scores_zero_at_centre():
    coords, scores = dark_1d(torch.full((2, 3, 8), 0.125), 2.0)
    assert (coords == 3.5).all() and (scores == 0).all()
