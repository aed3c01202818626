"""Specification of the heatmap + offset representation (heatbench/representations/offset.py)."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from heatbench import coords, floor
from heatbench.ops import flip_permutation
from heatbench.representation import build_representation
from heatbench.representations.offset import Offset, OffsetConfig, OffsetOutputs
from tests.fitting import adam_losses
from tests.keypoints import mirrored, random_keypoints

K = 5
FLIP_PAIRS = [(1, 2), (3, 4)]
VARIANTS = ["udp_combined", "centernet"]
SIZES = [(64, 64), (128, 128), (256, 192)]
# Both variants are exact up to float32 rounding (see Offset.floor_tolerance_px); flip-merged and plain decodes
# of the same ideal outputs differ by the same rounding only, a few ulps of coordinates below 256 px.
ROUNDING_PX = 1e-4


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Every tensor here is small: on a busy 2-core machine OpenMP's spinning threads made the training
    steps several times slower than one thread. Restored for the other test files."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make(input_size, variant="udp_combined", **overrides) -> Offset:
    return build_representation("offset", input_size, K, variant=variant, **overrides)






def random_outputs(rep: Offset, batch, seed) -> OffsetOutputs:
    generator = torch.Generator().manual_seed(seed)
    height, width = rep.output_size()
    return OffsetOutputs(torch.randn(batch, K, height, width, generator=generator),
                         torch.randn(batch, K, 2, height, width, generator=generator))


# --- configuration ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("input_size, sigma, blur", [((64, 64), 1.0, 3), ((128, 128), 1.0, 6), ((256, 192), 2.0, 11)])
def test_default_config_is_udp_combined_with_the_heatmap_sigma_table_and_a_blur_scaled_with_the_map(input_size,
                                                                                                 sigma, blur):
    # mmpose's blur_kernel_size of 11 belongs to its 64x48 maps; the blur keeps that ratio to the long side
    assert Offset.default_config(input_size) == OffsetConfig(variant="udp_combined", sigma=sigma, blur_kernel=blur)


@pytest.mark.parametrize("input_size", [(64, 64), (128, 128)])
def test_mmposes_unscaled_blur_pulls_the_peak_off_the_supervised_disk_on_small_maps(input_size):
    # The ideal outputs carry offsets only on the disk, as a network at zero loss: the unscaled 23-tap blur
    # moves the argmax off it on 16x16 and 32x32 maps, and the floor shows it; the scaled default does not.
    scaled = floor.floor_error(Offset(Offset.default_config(input_size), input_size, K))
    unscaled = floor.floor_error(Offset(OffsetConfig(sigma=1.0, blur_kernel=11), input_size, K))
    assert scaled < 1e-3 < 0.5 < unscaled


def test_every_keypoint_has_a_supervised_disk_cell_even_on_an_8x8_map():
    # mmpose's radius, 0.0546875 x 8 = 0.44 cells, leaves keypoints far from every cell centre without one
    rep = Offset(Offset.default_config((32, 32)), (32, 32), 400)
    targets = rep.encode(torch.rand(1, 400, 2, generator=torch.Generator().manual_seed(0)) * 32, torch.ones(1, 400))
    assert (targets.weight == 1).all() and (targets.mask.flatten(2).sum(-1) >= 1).all()


@pytest.mark.parametrize("field, value", [
    ("variant", "g-rmi"), ("stride", 0), ("stride", 4.0), ("sigma", 0.0), ("sigma", float("nan")),
    ("sigma", "2"), ("radius_factor", -0.1), ("blur_kernel", -1), ("blur_kernel", True),
])
def test_invalid_config_field_is_rejected_by_name(field, value):
    with pytest.raises(ValueError, match=field):
        OffsetConfig(**{field: value})


def test_head_needs_features_at_the_configured_stride():
    with pytest.raises(ValueError, match="stride"):
        make((64, 64)).build_head(in_channels=8, in_stride=8)


def test_head_emits_a_class_map_and_two_offset_maps_per_keypoint():
    rep = make((64, 48))
    outputs = rep.build_head(in_channels=8, in_stride=4)(torch.randn(3, 8, 16, 12))
    assert outputs.heatmaps.shape == (3, K, 16, 12) and outputs.offsets.shape == (3, K, 2, 16, 12)
    assert rep.output_size() == (16, 12)


# --- encoding --------------------------------------------------------------------------------------------


def test_udp_disk_is_the_cells_within_the_mmpose_radius():
    # 256x192 -> a 64x48 map, r = 0.0546875 * 64 = 3.5 cells. A keypoint on a cell centre of the UDP grid
    # (u = x_pc * 47 / 191 integral) has the 37 lattice points with i^2 + j^2 <= 12.25 in its disk.
    rep = make((256, 192))
    u = torch.tensor([20.0, 30.0])
    keypoint = u / torch.tensor([47 / 191, 63 / 255]) + 0.5
    targets = rep.encode(keypoint.view(1, 1, 2).expand(1, K, 2), torch.ones(1, K))
    assert targets.heatmaps[0, 0].sum() == 37 and targets.heatmaps[0, 0, 30, 20] == 1
    assert targets.heatmaps[0, 0, 30, 24] == 0 and targets.heatmaps[0, 0, 33, 20] == 1
    # Offsets are (u - i) / r at every cell, disk or not.
    assert torch.allclose(targets.offsets[0, 0, 0, 0, 0], torch.tensor(20 / 3.5))
    assert torch.allclose(targets.offsets[0, 0, 1, 0, 47], torch.tensor(30 / 3.5))


def test_centernet_peak_is_the_cell_containing_the_keypoint_and_its_offset_is_centred():
    rep = make((64, 64), variant="centernet")
    keypoints = random_keypoints((64, 64), K, batch=16, seed=1)
    targets = rep.encode(keypoints, torch.ones(16, K))
    cell = torch.floor(keypoints / 4)  # (B, K, 2) the cell containing the keypoint
    peak_index = targets.mask.flatten(-2).argmax(dim=-1)
    assert torch.equal(peak_index, (cell[..., 1] * 16 + cell[..., 0]).long())
    assert torch.equal(targets.mask.flatten(-2).sum(dim=-1), torch.ones(16, K))  # one supervised cell
    peak_offset = targets.offsets.flatten(-2).gather(-1, peak_index[..., None, None].expand(16, K, 2, 1))[..., 0]
    # float32: keypoints / 4 - cell - 0.5 is exact up to an ulp of numbers below 64
    assert torch.allclose(peak_offset, keypoints / 4 - cell - 0.5, atol=1e-5)
    assert (peak_offset >= -0.5).all() and (peak_offset < 0.5).all()
    assert torch.equal(targets.heatmaps.flatten(-2).max(dim=-1).values, torch.ones(16, K))


@pytest.mark.parametrize("variant", VARIANTS)
def test_nan_or_unlabelled_keypoint_gets_weight_zero_and_an_empty_class_map(variant):
    rep = make((64, 64), variant)
    keypoints = random_keypoints((64, 64), K, batch=2, seed=2)
    keypoints[0, 1] = math.nan
    visible = torch.ones(2, K)
    visible[1, 3] = 0
    targets = rep.encode(keypoints, visible)
    assert targets.weight[0, 1] == 0 and targets.weight[1, 3] == 0 and targets.weight.sum() == 2 * K - 2
    for b, k in ((0, 1), (1, 3)):
        assert targets.heatmaps[b, k].abs().sum() == 0 and targets.mask[b, k].abs().sum() == 0
    assert all(torch.isfinite(t).all() for t in targets)


@pytest.mark.parametrize("variant", VARIANTS)
def test_keypoint_whose_class_map_misses_the_output_map_gets_weight_zero(variant):
    rep = make((64, 64), variant)
    keypoints = torch.tensor([[[-40.0, 30.0], [30.0, 200.0], [30.0, 30.0], [-1.0, 30.0], [63.9, 0.1]]])
    weight = rep.encode(keypoints, torch.ones(1, K)).weight
    # the first two lie far outside; the last three put a disk cell (UDP) or window cell (MSRA) on the map
    assert weight.tolist() == [[0.0, 0.0, 1.0, 1.0, 1.0]]


# --- round trip and flip ---------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("input_size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_ideal_outputs_decode_exactly_in_the_interior(variant, input_size):
    # The argmax lands on a supervised cell (the disk or the peak), where the ideal offset is exact.
    rep = make(input_size, variant)
    keypoints = floor.sample_keypoints(input_size, 64 * K, "interior", seed=3).view(64, K, 2)
    decoded, scores = rep.decode(rep.ideal_outputs(keypoints, torch.ones(64, K)))
    assert (decoded - keypoints).norm(dim=-1).max() <= rep.floor_tolerance_px
    assert (scores > 0).all()


@settings(max_examples=25, deadline=None)
@given(variant=st.sampled_from(VARIANTS), size=st.sampled_from(SIZES),
       quarters=st.lists(st.tuples(st.integers(0, 4 * 255), st.integers(0, 4 * 255)), min_size=K, max_size=K))
def test_flip_back_of_the_mirrored_ideal_outputs_is_exact_and_the_flip_merge_within_half_a_cell(variant, size,
                                                                                                quarters):
    # Quarter-pixel interior keypoints include x = multiples of the stride, where the CenterNet peak cell of the
    # mirrored map is the neighbour of the plain one. Each decodes exactly on its own; their average can peak on
    # a cell that only one of them supervises, whose offset the merge halves: at most half a cell per axis.
    height, width = size
    rep = make(size, variant)
    low = torch.tensor([coords.interior_margin_px(width), coords.interior_margin_px(height)])
    keypoints = (low + (torch.tensor(quarters, dtype=torch.float32) / 4).remainder(torch.tensor([width, height])
                                                                                  - 2 * low))[None]
    visible = torch.ones(1, K)
    ideal = rep.ideal_outputs(keypoints, visible)
    flipped_back = rep.flip_back(rep.ideal_outputs(mirrored(keypoints, width, FLIP_PAIRS), visible), FLIP_PAIRS)
    from_flip, _ = rep.decode(flipped_back)
    merged, _ = rep.decode(rep.merge_flipped(ideal, flipped_back))
    assert (from_flip - keypoints).norm(dim=-1).max() <= rep.floor_tolerance_px
    half_cell = math.hypot(width / rep.output_size()[1], height / rep.output_size()[0]) / 2
    assert (merged - keypoints).norm(dim=-1).max() <= half_cell + rep.floor_tolerance_px


@pytest.mark.parametrize("variant", VARIANTS)
def test_flip_back_negates_the_x_offsets_and_swaps_the_pairs(variant):
    rep = make((64, 64), variant)
    outputs = random_outputs(rep, batch=2, seed=4)
    back = rep.flip_back(outputs, FLIP_PAIRS)
    perm = flip_permutation(K, FLIP_PAIRS)
    assert torch.equal(back.heatmaps, outputs.heatmaps.flip(-1)[:, perm])
    assert torch.equal(back.offsets[:, :, 0], -outputs.offsets[:, :, 0].flip(-1)[:, perm])
    assert torch.equal(back.offsets[:, :, 1], outputs.offsets[:, :, 1].flip(-1)[:, perm])
    twice = rep.flip_back(back, FLIP_PAIRS)
    assert torch.equal(twice.heatmaps, outputs.heatmaps) and torch.equal(twice.offsets, outputs.offsets)


def test_udp_decode_reads_the_offset_at_the_argmax_of_the_blurred_class_map():
    # A lone spike at (3, 2) beats a 5x5 plateau centred on (8, 8) in the raw map, not after the 23-tap blur.
    rep = make((64, 64))
    heatmaps = torch.zeros(1, K, 16, 16)
    heatmaps[..., 2, 3] = 1.0
    heatmaps[..., 6:11, 6:11] = 0.6
    offsets = torch.zeros(1, K, 2, 16, 16)
    offsets[:, :, 0, 8, 8] = 0.5
    offsets[:, :, 1, 8, 8] = -0.25
    decoded, scores = rep.decode(OffsetOutputs(heatmaps, offsets))
    r = 0.0546875 * 16
    u = torch.tensor([8 + 0.5 * r, 8 - 0.25 * r])
    expected = u * 63 / 15 + 0.5  # the UDP grid back to canonical pixels
    # float32 arithmetic on values below 64: 1e-5 px
    assert torch.allclose(decoded, expected.expand(1, K, 2), atol=1e-5)
    assert (scores < 0.6).all()  # the score is the maximum of the blurred map


def test_decode_blur_is_opencv_gaussian_blur_with_its_reflect_101_border():
    from heatbench.ops import gaussian_blur

    maps = torch.rand(2, 3, 16, 12, generator=torch.Generator().manual_seed(14), dtype=torch.float64)
    size, deviation = 7, 0.3 * (3 - 1) + 0.8  # cv2's sigma for ksize 7 with sigmaX = 0
    taps = torch.arange(size, dtype=torch.float64) - 3
    kernel = torch.exp(-taps**2 / (2 * deviation**2))
    kernel = kernel / kernel.sum()
    padded = torch.nn.functional.pad(maps.view(6, 1, 16, 12), (3, 3, 3, 3), mode="reflect")  # = reflect-101
    expected = torch.nn.functional.conv2d(padded, (kernel[:, None] * kernel[None, :]).view(1, 1, size, size))
    assert torch.allclose(gaussian_blur(maps, size), expected.view_as(maps), atol=1e-12)  # float64 sums
    # a kernel wider than the map reflects more than once and still preserves a constant map
    assert torch.allclose(gaussian_blur(torch.ones(1, 1, 5, 4), 23), torch.ones(1, 1, 5, 4))


# --- loss ------------------------------------------------------------------------------------------------


def _combined_target_mse_loss_reference(outputs: OffsetOutputs, targets) -> torch.Tensor:
    """mmpose's CombinedTargetMSELoss(use_target_weight=True) as written there: a loop over joints."""
    batch = outputs.heatmaps.shape[0]
    loss = 0.0
    for k in range(K):
        weight = targets.weight[:, k, None]
        pred = outputs.heatmaps[:, k].reshape(batch, -1) * weight
        gt = targets.heatmaps[:, k].reshape(batch, -1) * weight
        loss = loss + 0.5 * torch.nn.functional.mse_loss(pred, gt)
        for axis in (0, 1):
            offset_pred = outputs.offsets[:, k, axis].reshape(batch, -1)
            offset_gt = targets.offsets[:, k, axis].reshape(batch, -1)
            loss = loss + 0.5 * torch.nn.functional.mse_loss(gt * offset_pred, gt * offset_gt)
    return loss / K


def test_udp_combined_loss_is_mmpose_combined_target_mse_loss():
    rep = make((128, 128))
    keypoints = random_keypoints((128, 128), K, batch=3, seed=5)
    visible = torch.ones(3, K)
    visible[2, 0] = 0
    targets = rep.encode(keypoints, visible)
    outputs = random_outputs(rep, batch=3, seed=6)
    # float32 sums of ~10^4 terms in two different orders: agreement to 1e-6 relative
    assert torch.allclose(rep.loss(outputs, targets), _combined_target_mse_loss_reference(outputs, targets),
                          rtol=1e-6)


def test_centernet_offset_loss_is_l1_at_the_peak_cell_only():
    rep = make((64, 64), variant="centernet")
    keypoints = random_keypoints((64, 64), K, batch=2, seed=7)
    targets = rep.encode(keypoints, torch.ones(2, K))
    perfect = OffsetOutputs(targets.heatmaps, targets.offsets)
    assert rep.loss(perfect, targets) == 0
    off_peak = perfect.offsets + 3.0 * (1 - targets.mask).unsqueeze(2)
    assert rep.loss(OffsetOutputs(targets.heatmaps, off_peak), targets) == 0
    # +0.3 on the x offset at every peak: L1 summed over the 2K peaks' x and y entries / (2 * 2K) entries
    at_peak = perfect.offsets + 0.3 * targets.mask.unsqueeze(2) * torch.tensor([1.0, 0.0]).view(1, 1, 2, 1, 1)
    assert torch.isclose(rep.loss(OffsetOutputs(targets.heatmaps, at_peak), targets), torch.tensor(0.15))


@pytest.mark.parametrize("variant", VARIANTS)
def test_invisible_keypoint_adds_no_loss(variant):
    rep = make((64, 64), variant)
    keypoints = random_keypoints((64, 64), K, batch=2, seed=8)
    visible = torch.ones(2, K)
    visible[1, 2] = 0
    targets = rep.encode(keypoints, visible)
    outputs = random_outputs(rep, batch=2, seed=9)
    changed = OffsetOutputs(outputs.heatmaps.clone(), outputs.offsets.clone())
    changed.heatmaps[1, 2] += 5.0
    changed.offsets[1, 2] -= 7.0
    assert rep.loss(changed, targets) == rep.loss(outputs, targets)


@pytest.mark.parametrize("variant", VARIANTS)
def test_nan_keypoint_gives_a_finite_loss_and_finite_gradients(variant):
    rep = make((64, 64), variant)
    keypoints = random_keypoints((64, 64), K, batch=2, seed=10)
    keypoints[1, 4, 0] = math.nan
    outputs = random_outputs(rep, batch=2, seed=11)
    heatmaps = outputs.heatmaps.requires_grad_()
    loss = rep.loss(OffsetOutputs(heatmaps, outputs.offsets), rep.encode(keypoints, torch.ones(2, K)))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(heatmaps.grad).all()


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_few_adam_steps_on_fixed_features_reduce_the_loss(variant):
    torch.manual_seed(12)
    rep = make((64, 64), variant)
    head = rep.build_head(in_channels=16, in_stride=4)
    features = torch.randn(2, 16, 16, 16)
    targets = rep.encode(random_keypoints((64, 64), K, batch=2, seed=13), torch.ones(2, K))
    losses = adam_losses(rep, head, features, targets, steps=60, lr=1e-2)
    assert all(math.isfinite(value) for value in losses)
    # The reference init starts near the all-zero output; a 1x1 head on 16 random channels can explain only part
    # of the targets (the udp_combined loss settles 32% lower), so 60 steps must take off at least a fifth.
    assert losses[-1] < 0.8 * losses[0]
