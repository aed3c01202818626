"""The top-down pipeline: exact crop geometry, warps that agree with it, and augmentation that keeps keypoints
on the image content they label."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from heatbench.data import (AugmentConfig, KeypointDataset, TopDownDataset, apply_affine, crop_affine, crop_box,
                            invert_affine, warp_image)
from heatbench.data.topdown import IMAGENET_MEAN, IMAGENET_STD
from heatbench.errors import DataError

MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)
INPUT = (48, 40)  # (H, W)


def test_crop_box_pads_to_the_input_aspect_then_by_one_and_a_quarter():
    centre, size = crop_box(np.array([10.0, 20.0, 40.0, 100.0]), (256, 192))
    np.testing.assert_allclose(centre, [30, 70])
    np.testing.assert_allclose(size, [100 * 0.75 * 1.25, 100 * 1.25])  # too narrow for 3:4, so widened
    _, wide = crop_box(np.array([[0.0, 0.0, 300.0, 10.0]]), (256, 192))
    np.testing.assert_allclose(wide, [[300 * 1.25, 400 * 1.25]])


def test_crop_affine_puts_the_crop_region_exactly_onto_the_input():
    affine = crop_affine(np.array([30.0, 70.0]), np.array([40.0, 60.0]), (120, 80))
    corners = apply_affine(affine, np.array([[10.0, 40.0], [50.0, 100.0], [30.0, 70.0]]))
    np.testing.assert_array_equal(corners, [[0, 0], [80, 120], [40, 60]])
    flipped = apply_affine(crop_affine(np.array([30.0, 70.0]), np.array([40.0, 60.0]), (120, 80), flip=True),
                           np.array([[10.0, 40.0], [20.0, 45.0]]))
    np.testing.assert_array_equal(flipped, [[80, 0], [60, 10]])  # x -> W - x, no one-pixel shift


@settings(max_examples=50, deadline=None)
@given(cx=st.floats(-500, 1500), cy=st.floats(-500, 1500), w=st.floats(1, 2000), h=st.floats(1, 2000),
       rotation=st.floats(-180, 180), flip=st.booleans(),
       points=st.lists(st.tuples(st.floats(-1e3, 1e4), st.floats(-1e3, 1e4)), min_size=1, max_size=5))
def test_crop_affine_round_trips_through_its_inverse(cx, cy, w, h, rotation, flip, points):
    centre = np.array([cx, cy])
    affine = crop_affine(centre, np.array([w, h]), (64, 48), rotation, flip)
    image_points = np.array(points)
    back = apply_affine(invert_affine(affine), apply_affine(affine, image_points))
    np.testing.assert_allclose(back, image_points, atol=1e-7)  # float64 on values up to 1e4: ~1e-12 relative
    np.testing.assert_allclose(apply_affine(affine, centre[None]), [[24, 32]], atol=1e-9)  # centre -> centre


def test_apply_affine_takes_batches_of_numpy_arrays_and_tensors_alike():
    affines = np.stack([crop_affine(np.array([5.0, 6.0]), np.array([8.0, 9.0]), (32, 32), angle) for angle in (0, 40)])
    points = np.random.default_rng(0).uniform(0, 10, (2, 3, 2))
    expected = np.stack([apply_affine(affine, batch) for affine, batch in zip(affines, points)])
    np.testing.assert_allclose(apply_affine(affines, points), expected)
    np.testing.assert_allclose(apply_affine(torch.from_numpy(affines), torch.from_numpy(points)).numpy(), expected)


def _coordinate_image(height: int, width: int) -> torch.Tensor:
    """(2, H, W) image whose channels are the canonical x and y of each pixel centre."""
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    return torch.stack([xs, ys]).double()


@settings(max_examples=40, deadline=None)
@given(cx=st.floats(60, 100), cy=st.floats(60, 100), scale=st.floats(0.3, 1.5), rotation=st.floats(-180, 180),
       flip=st.booleans())
def test_warp_samples_the_image_where_the_affine_says(cx, cy, scale, rotation, flip):
    # Bilinear interpolation of a linear ramp is exact, so a warped coordinate image must read back the image
    # point that the inverse affine assigns to each input pixel centre; a half-pixel slip would show as 0.5.
    # The crop (at most 60 x 72 px, half-diagonal < 47) stays inside the ramp's interior [0.5, 159.5], where
    # no zero padding is mixed in.
    affine = crop_affine(np.array([cx, cy]), np.array([40.0, 48.0]) * scale, INPUT, rotation, flip)
    warped = warp_image(_coordinate_image(160, 160), affine, INPUT)  # (2, H, W)
    centres = _coordinate_image(*INPUT).permute(1, 2, 0).numpy()  # (H, W, 2) input pixel centres
    expected = apply_affine(invert_affine(affine), centres)
    np.testing.assert_allclose(warped.permute(1, 2, 0).numpy(), expected, atol=1e-9)  # float64 all the way


def test_warp_with_the_identity_crop_returns_the_image_and_the_flip_mirrors_it_exactly():
    image = torch.rand(3, *INPUT, generator=torch.Generator().manual_seed(0))
    centre, size = np.array([INPUT[1] / 2, INPUT[0] / 2]), np.array([INPUT[1], INPUT[0]], dtype=float)
    # float32 sampling positions are off by ~1e-6 px; neighbouring values differ by up to 1, hence 1e-5
    torch.testing.assert_close(warp_image(image, crop_affine(centre, size, INPUT), INPUT), image, atol=1e-5, rtol=0)
    torch.testing.assert_close(warp_image(image, crop_affine(centre, size, INPUT, flip=True), INPUT),
                               image.flip(-1), atol=1e-5, rtol=0)


# Synthetic data: keypoint k is a Gaussian blob in colour channel k, so the warped image shows where each
# original keypoint went. Keypoints 0 and 1 are a flip pair, 2 is unpaired, 3 is unlabelled.
BLOB_SIGMA = 2.5  # image px: wide enough to be sampled smoothly, narrow enough to stay inside the crop
KEYPOINTS = np.array([[[30.3, 40.7], [52.6, 38.2], [41.4, 60.9], [np.nan, np.nan]],
                      [[45.5, 30.5], [34.2, 52.8], [50.1, 56.4], [np.nan, np.nan]]])


def _blob_image(points: np.ndarray, height: int = 90, width: int = 84) -> np.ndarray:
    ys, xs = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    image = np.zeros((height, width, 3))
    for channel, (x, y) in enumerate(points[:3]):
        image[..., channel] = np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * BLOB_SIGMA**2))
    return np.round(image * 255).astype(np.uint8)


def _synthetic(tmp_path: Path, flip_pairs=((0, 1),), boxes=None) -> KeypointDataset:
    paths = []
    for number, points in enumerate(KEYPOINTS):
        paths.append(tmp_path / f"blobs{number}.png")
        Image.fromarray(_blob_image(points)).save(paths[-1])
    visible = np.isfinite(KEYPOINTS).all(axis=-1)
    boxes = np.array([[20.0, 25.0, 45.0, 45.0]] * 2) if boxes is None else boxes
    return KeypointDataset(name="blobs", source=tmp_path, image_paths=paths, image_ids=np.arange(2),
                           keypoints=KEYPOINTS, visible=visible, boxes=boxes, areas=boxes[:, 2] * boxes[:, 3],
                           keypoint_names=["left_a", "right_a", "b", "c"],
                           flip_pairs=None if flip_pairs is None else list(flip_pairs),
                           sigmas=np.full(4, 0.05), sigma_note="test")


def _pixels(sample) -> torch.Tensor:
    return sample.image * STD + MEAN  # (3, H, W) in [0, 1]


def test_augmentation_keeps_keypoints_on_the_image_content_they_label(tmp_path):
    data = TopDownDataset(_synthetic(tmp_path), INPUT, train=True,
                          augment=AugmentConfig(flip_prob=0.5, scale_factor=0.25, rotation=30.0, rotation_prob=1.0))
    ys, xs = torch.meshgrid(torch.arange(INPUT[0]) + 0.5, torch.arange(INPUT[1]) + 0.5, indexing="ij")
    flips_seen = set()
    for epoch in range(8):
        data.set_epoch(epoch)
        for index in range(len(data)):
            sample = data[index]
            flipped = bool(torch.linalg.det(sample.affine[:, :2]) < 0)  # a mirror reverses orientation
            flips_seen.add(flipped)
            pixels = _pixels(sample)
            assert sample.visible.tolist() == [1, 1, 1, 0] and sample.keypoints[3].tolist() == [0, 0]
            for k in range(3):
                channel = pixels[[1, 0, 2][k] if flipped else k]  # flipping swaps the labels 0 and 1
                weights = channel / channel.sum()
                centroid = torch.stack([(weights * xs).sum(), (weights * ys).sum()])
                # The blob centroid tracks the keypoint up to the blob's 8-bit quantisation and the bilinear
                # resampling of a sigma 2.5 px Gaussian: at most 0.05 px over 40 epochs; 0.1 px still catches a
                # half-pixel slip (0.5 image px is at least 0.28 input px at these crop scales).
                torch.testing.assert_close(centroid, sample.keypoints[k], atol=0.1, rtol=0)
                brightest = torch.stack([xs.flatten()[channel.argmax()], ys.flatten()[channel.argmax()]])
                assert (brightest - sample.keypoints[k]).abs().max() <= 1.0  # within the pixel it falls in
    assert flips_seen == {False, True}


def test_flip_swaps_the_pairs_and_mirrors_the_unaugmented_crop(tmp_path):
    synthetic = _synthetic(tmp_path)
    plain = TopDownDataset(synthetic, INPUT, train=False)[0]
    mirrored = TopDownDataset(synthetic, INPUT, train=True,
                              augment=AugmentConfig(flip_prob=1.0, scale_factor=0.0, rotation=0.0))[0]
    torch.testing.assert_close(mirrored.image, plain.image.flip(-1), atol=1e-5, rtol=0)
    expected = plain.keypoints[[1, 0, 2, 3]].clone()
    expected[:3, 0] = INPUT[1] - expected[:3, 0]
    torch.testing.assert_close(mirrored.keypoints, expected, atol=1e-4, rtol=0)  # float32 rounding of ~40 px


def test_no_flip_without_flip_pairs(tmp_path):
    data = TopDownDataset(_synthetic(tmp_path, flip_pairs=None), INPUT, train=True,
                          augment=AugmentConfig(flip_prob=1.0))
    for epoch in range(5):
        data.set_epoch(epoch)
        assert all(torch.linalg.det(data[index].affine[:, :2]) > 0 for index in range(len(data)))


def test_keypoints_outside_the_input_are_invisible_and_zero(tmp_path):
    boxes = np.array([[20.0, 25.0, 15.0, 45.0]] * 2)  # keypoint 1 (x near 52 or 34) vs a narrow crop
    data = TopDownDataset(_synthetic(tmp_path, boxes=boxes), (48, 16), train=False)
    sample = data[0]
    assert sample.visible.tolist() == [1, 0, 0, 0]
    assert sample.keypoints[1:].abs().sum() == 0 and torch.isfinite(sample.keypoints).all()


def test_sample_affine_maps_input_keypoints_back_to_image_pixels(tmp_path):
    synthetic = _synthetic(tmp_path)
    data = TopDownDataset(synthetic, INPUT, train=True, augment=AugmentConfig(rotation_prob=1.0))
    for index in range(len(data)):
        sample = data[index]
        visible = sample.visible > 0
        flipped = bool(torch.linalg.det(sample.affine[:, :2]) < 0)
        truth = synthetic.keypoints[index][[1, 0, 2, 3] if flipped else [0, 1, 2, 3]]
        back = apply_affine(sample.affine.double(), sample.keypoints.double())
        np.testing.assert_allclose(back[visible].numpy(), truth[visible.numpy()], atol=1e-3)  # float32 affine


def test_augmentation_is_reproducible_across_worker_counts_and_changes_with_the_epoch(tmp_path):
    data = TopDownDataset(_synthetic(tmp_path), INPUT, train=True, seed=7)

    def epochs(num_workers: int) -> list[torch.Tensor]:
        loader = torch.utils.data.DataLoader(data, batch_size=2, num_workers=num_workers,
                                             persistent_workers=num_workers > 0)
        keypoints = []
        for epoch in range(2):
            data.set_epoch(epoch)  # must reach persistent workers too
            keypoints.append(torch.cat([batch.keypoints for batch in loader]))
        return keypoints

    in_process, with_workers = epochs(0), epochs(2)
    for left, right in zip(in_process, with_workers):
        torch.testing.assert_close(left, right, atol=0, rtol=0)
    assert not torch.equal(in_process[0], in_process[1])


def test_default_collate_batches_samples(tmp_path):
    loader = torch.utils.data.DataLoader(TopDownDataset(_synthetic(tmp_path), INPUT, train=False), batch_size=2)
    batch = next(iter(loader))
    assert batch.image.shape == (2, 3, *INPUT) and batch.keypoints.shape == (2, 4, 2) and batch.visible.shape == (2, 4)
    assert batch.index.tolist() == [0, 1] and batch.affine.shape == (2, 2, 3) and batch.image.dtype == torch.float32


def test_grey_and_rgba_images_become_rgb(tmp_path):
    synthetic = _synthetic(tmp_path)
    grey = np.full((90, 84), 100, np.uint8)
    rgba = np.zeros((90, 84, 4), np.uint8)
    rgba[..., :] = (10, 20, 30, 0)  # fully transparent: the colour is kept, alpha dropped
    Image.fromarray(grey, mode="L").save(synthetic.image_paths[0])
    Image.fromarray(rgba, mode="RGBA").save(synthetic.image_paths[1])
    data = TopDownDataset(synthetic, INPUT, train=False)
    centre = (slice(None), INPUT[0] // 2, INPUT[1] // 2)
    torch.testing.assert_close(_pixels(data[0])[centre], torch.full((3,), 100 / 255), atol=1e-5, rtol=0)
    torch.testing.assert_close(_pixels(data[1])[centre], torch.tensor([10, 20, 30]) / 255, atol=1e-5, rtol=0)


def test_missing_or_unreadable_image_raises_data_error_naming_it(tmp_path):
    synthetic = _synthetic(tmp_path)
    synthetic.image_paths[0].unlink()
    synthetic.image_paths[1].write_bytes(b"not a png")
    data = TopDownDataset(synthetic, INPUT, train=False)
    for index in range(2):
        with pytest.raises(DataError, match=synthetic.image_paths[index].name):
            data[index]


def test_augment_settings_are_validated(tmp_path):
    with pytest.raises(ValueError, match="flip_prob"):
        AugmentConfig(flip_prob=1.5)
    with pytest.raises(ValueError, match="scale_factor"):
        AugmentConfig(scale_factor=1.0)
    with pytest.raises(ValueError, match="train=True"):
        TopDownDataset(_synthetic(tmp_path), INPUT, train=False, augment=AugmentConfig())
