"""The rendered data set: exact keypoints at any input size, determinism, mirroring, and its way through the
same pipeline, command line and harness as any data set."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from heatbench.cli import main
from heatbench.data import AugmentConfig, TopDownDataset, crop_box
from heatbench.data.coco import COCO_NAMES
from heatbench.data.synthetic import (CHUNK_ELEMENTS, SPLIT_STRIDE, Capsules, SceneRenderer, Scenes, SyntheticConfig,
                                      load_synthetic, parse_synthetic, render)
from heatbench.errors import DataError
from heatbench.splits import load_split
from heatbench.train import mean_pose
from tests.devices import OneDevicePerOp

SMALL = SyntheticConfig(train=24, val=8, test=8)
FLIP_ONLY = AugmentConfig(flip_prob=1.0, scale_factor=0.0, rotation_prob=0.0)


def _batch(data: TopDownDataset, indices=None):
    samples = data.__getitems__(list(range(len(data))) if indices is None else indices)
    return (torch.stack([sample.image for sample in samples]), torch.stack([sample.keypoints for sample in samples]),
            torch.stack([sample.visible for sample in samples]), [sample.affine for sample in samples])


def test_a_marker_rendered_at_a_keypoint_has_its_centroid_within_0_05_px_of_it_at_256x192():
    """White discs at the keypoints (in scene px, so ellipses at 256x192) on black, drawn through the samples'
    own augmented affines, by the capsule renderer the figure is drawn with."""
    dataset = load_synthetic(SMALL, "val")
    data = TopDownDataset(dataset, (256, 192), train=True, seed=3)
    _, keypoints, visible, to_image = _batch(data)
    scene_points = torch.einsum("nij,nkj->nki", torch.stack(to_image)[..., :2], keypoints) \
        + torch.stack(to_image)[:, None, :, 2]
    batch, count = keypoints.shape[:2]
    discs = scene_points.reshape(-1, 1, 2)
    markers = len(discs)
    capsules = Capsules(discs, discs, torch.full((markers, 1), 5.0), torch.ones(markers, 1, 3),
                        torch.zeros(markers, 1, 3), torch.zeros(markers, 1), torch.ones(markers, 1, dtype=torch.bool))
    scenes = Scenes(None, None, None, capsules, torch.zeros(len(discs), 3, 10, 10))
    to_scene = torch.stack(to_image).repeat_interleave(count, dim=0)  # every sample's input -> scene affine
    images = render(scenes, to_scene, (256, 192))[:, 0].double()  # (N K, H, W)
    rows, columns = torch.meshgrid(torch.arange(256) + 0.5, torch.arange(192) + 0.5, indexing="ij")
    mass = images.sum(dim=(1, 2))
    centroid = torch.stack([(images * columns).sum(dim=(1, 2)), (images * rows).sum(dim=(1, 2))], -1) / mass[:, None]
    expected = keypoints.reshape(-1, 2).double()
    inside = (visible.reshape(-1) > 0) & (expected > 8).all(-1) & (expected < torch.tensor([184, 248])).all(-1)
    assert inside.sum() > 0.8 * batch * count  # most keypoints are tested, away from the border
    error = (centroid - expected).norm(dim=-1)[inside]
    assert error.max() < 0.05, error.max()


def test_a_mirrored_scene_gives_the_mirrored_image_and_keypoints_with_the_pairs_swapped():
    dataset = load_synthetic(SMALL, "val")
    for size in ((64, 64), (256, 192)):
        plain, plain_xy, _, _ = _batch(TopDownDataset(dataset, size, train=False))
        flipped = TopDownDataset(dataset, size, train=True, augment=FLIP_ONLY)
        mirrored, mirrored_xy, mirrored_visible, _ = _batch(flipped)
        torch.testing.assert_close(mirrored, plain.flip(-1), atol=2e-4, rtol=0)
        swapped = list(range(len(COCO_NAMES)))
        for left, right in dataset.flip_pairs:
            swapped[left], swapped[right] = right, left
        expected = plain_xy[:, swapped]
        expected[..., 0] = size[1] - expected[..., 0]
        torch.testing.assert_close(mirrored_xy, expected, atol=1e-4, rtol=0)
        assert (mirrored_visible == 1).all()
    assert dataset.flip_pairs == [(1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)]


def test_the_same_seed_and_index_give_an_identical_image_in_any_batch():
    first = load_synthetic(SMALL, "train")
    again = load_synthetic(dataclasses.replace(SMALL, train=40, val=3), "train")  # bigger set, other batches
    images, keypoints, _, _ = _batch(TopDownDataset(first, (64, 64), train=True, seed=1), [5, 2, 9])
    alone, alone_keypoints, _, _ = _batch(TopDownDataset(again, (64, 64), train=True, seed=1), [9, 5])
    assert torch.equal(alone[0], images[2]) and torch.equal(alone[1], images[0])
    assert torch.equal(alone_keypoints[0], keypoints[2])
    other_seed, _, _, _ = _batch(TopDownDataset(load_synthetic(dataclasses.replace(SMALL, seed=1), "train"),
                                                (64, 64), train=True, seed=1), [5])
    assert not torch.equal(other_seed[0], images[0])


def test_splits_are_disjoint_scene_ranges_that_do_not_move_with_the_other_splits_sizes():
    splits = {name: load_synthetic(SMALL, name) for name in ("train", "val", "test")}
    assert [int(s.image_ids[0]) for s in splits.values()] == [0, SPLIT_STRIDE, 2 * SPLIT_STRIDE]
    assert len(set(np.concatenate([s.image_ids for s in splits.values()]))) == 24 + 8 + 8
    bigger = load_synthetic(dataclasses.replace(SMALL, train=100), "val")
    np.testing.assert_array_equal(bigger.keypoints, splits["val"].keypoints)
    split = load_split("synthetic:train=24,val=8,test=8")
    train, val = split.train, split.val
    np.testing.assert_array_equal(val.keypoints, splits["val"].keypoints)
    assert train.name == val.name == SMALL.spec and len(train) == 24


def test_64_and_256x192_give_the_same_keypoints_in_normalised_crop_coordinates():
    dataset = load_synthetic(SMALL, "train")
    normalised = []
    for height, width in ((64, 64), (256, 192), (128, 128)):
        _, keypoints, visible, _ = _batch(TopDownDataset(dataset, (height, width), train=False))
        assert (visible == 1).all()  # the crop holds the whole figure
        normalised.append(keypoints.double() / torch.tensor([width, height]))
    torch.testing.assert_close(normalised[1], normalised[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(normalised[2], normalised[0], atol=1e-6, rtol=0)
    # at a square input the crop is the one crop_box makes from the figure's box
    centre, size = crop_box(dataset.boxes, (64, 64))
    np.testing.assert_allclose(np.concatenate([centre - size / 2, size], 1), dataset.crops, atol=1e-3)


def test_the_same_scene_is_rendered_natively_at_every_size():
    """256x256 averaged over 4x4 blocks is the 64x64 rendering: one scene, drawn at each size's own pixels."""
    dataset = load_synthetic(SMALL, "val")
    fine, _, _, _ = _batch(TopDownDataset(dataset, (256, 256), train=False))
    coarse, _, _, _ = _batch(TopDownDataset(dataset, (64, 64), train=False))
    difference = (torch.nn.functional.avg_pool2d(fine, 4) - coarse).abs()
    assert difference.mean() < 0.01  # ImageNet-normalised units: under 0.0025 of the colour range
    other, _, _, _ = _batch(TopDownDataset(load_synthetic(SMALL, "test"), (64, 64), train=False))
    assert (other - coarse).abs().mean() > 0.3  # other scenes differ by far more


def test_keypoints_stay_labelled_where_occluded_and_poses_vary_widely():
    split = load_split("synthetic:train=256,val=64")
    train, val = split.train, split.val
    occluded = val.renderer.occluded(val.image_ids)
    assert (val.visible == 1).all()
    assert 0.05 < occluded.mean() < 0.5  # occluders and the body itself hide some keypoints
    baseline = mean_pose(train, val, (64, 64))
    assert baseline["mean_error_input_px"] > 8  # a poor guess: the mirror-mouse set's is 5.3 px


def test_the_image_decides_left_from_right():
    """Head up, the person's left shoulder and hip lie on the image's right of the body's axis in every scene
    (a figure seen from behind would have them on the left and look like its mirrored front view)."""
    keypoints = SceneRenderer(SMALL).scenes(torch.arange(2048)).keypoints.double()  # (B, 17, 2), y down
    shoulders, hips = keypoints[:, 5:7], keypoints[:, 11:13]  # (left, right)
    up = shoulders.mean(1) - hips.mean(1)
    for left, right in (shoulders.unbind(1), hips.unbind(1)):
        across = left - right
        # the component of left - right along up turned a quarter clockwise (y is down), in torso lengths
        rightward = (across[:, 1] * up[:, 0] - across[:, 0] * up[:, 1]) / up.norm(dim=1).square()
        assert (rightward > 0.1).all()  # the hips, the narrower pair, are 0.12 torso lengths apart at 60 degrees


def test_clutter_comes_and_goes_without_moving_the_figure():
    plain = dataclasses.replace(SMALL, distractors=0.0, occluders=0.0)
    default, bare = load_synthetic(SMALL, "val"), load_synthetic(plain, "val")
    np.testing.assert_array_equal(bare.keypoints, default.keypoints)
    images, _, _, _ = _batch(TopDownDataset(default, (64, 64), train=False))
    bare_images, _, _, _ = _batch(TopDownDataset(bare, (64, 64), train=False))
    changed = (images - bare_images).abs().amax(dim=1) > 1e-4  # (B, H, W) pixels the clutter covers
    assert 0.02 < changed.float().mean() < 0.5  # clutter covers part of each scene, the figure stays where it was
    # with no occluders only the body itself hides keypoints
    assert bare.renderer.occluded(bare.image_ids).mean() < default.renderer.occluded(default.image_ids).mean()


def test_a_batch_is_rendered_wholly_on_the_device_it_is_asked_for(monkeypatch):
    """The CUDA path, checked without a GPU (``tests/devices.py``): rendered on the meta device, every operator
    takes its tensors from that device alone."""
    monkeypatch.setitem(CHUNK_ELEMENTS, "meta", CHUNK_ELEMENTS["cpu"])
    blurred_and_noisy = load_synthetic(dataclasses.replace(SMALL, blur=0.01, noise=0.02), "train")
    data = TopDownDataset(blurred_and_noisy, (64, 48), train=True, device="meta")
    with OneDevicePerOp():
        images, _, _, _ = _batch(data, [0, 3])
    assert images.device.type == "meta" and images.shape == (2, 3, 64, 48)


def test_subset_keeps_the_crops_and_the_renderer():
    dataset = load_synthetic(SMALL, "train")
    part = dataset.subset([3, 1])
    assert part.renderer is dataset.renderer and part.crops.shape == (2, 4)
    np.testing.assert_array_equal(part.image_ids, dataset.image_ids[[3, 1]])


def test_the_spec_syntax_and_its_errors_name_the_field():
    assert parse_synthetic("synthetic") == SyntheticConfig()
    assert parse_synthetic("synthetic:seed=3, train=50,blur=0.01") == SyntheticConfig(train=50, seed=3, blur=0.01)
    assert parse_synthetic(SyntheticConfig(noise=0.05).spec) == SyntheticConfig(noise=0.05)
    for spec, field in (("synthetic:train=abc", "train"), ("synthetic:val=0", "val"), ("synthetic:size=4", "size"),
                        ("synthetic:noise=-1", "noise"), ("synthetic:seed", "seed"),
                        ("synthetic:distractors=1.5", "distractors")):
        with pytest.raises(DataError, match=field) as error:
            parse_synthetic(spec)
        assert "\n" not in str(error.value) and str(error.value).startswith(spec)


@pytest.mark.parametrize("argv, output", [(["run", "--repr", "heatmap", "--data", "synthetic:train=abc"], "--out"),
                                          (["data", "synthetic:trian=5"], "--grid"),
                                          (["data", "synthetic:train=8,val=4", "--count", "0"], "--grid")])
def test_bad_specs_exit_2_with_one_line_naming_the_field(argv, output, capsys, tmp_path):
    assert main(argv + [output, str(tmp_path / "out")]) == 2
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1 and ("'abc'" in message or "trian" in message or "--count" in message)
    assert not (tmp_path / "out").exists()


def test_data_command_writes_a_grid_of_samples(tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["data", "synthetic:seed=2,train=8,val=4", "--res", "64", "--count", "6", "--grid", str(out)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert "keypoints:  17: nose" in "\n".join(printed) and printed[-1] == str(out)
    with Image.open(out) as grid:
        assert grid.size == (4 * 64 * 3, 2 * 64 * 3)  # 4 columns, tiles enlarged 3x to 192 px


def test_a_run_on_the_rendered_set_goes_through_the_harness_and_evaluate_scores_its_test_scenes(tmp_path, capsys):
    argv = ["run", "--repr", "heatmap", "--res", "64", "--data", "synthetic:train=16,val=8", "--steps", "3",
            "--batch-size", "8", "--quiet", "--out", str(tmp_path / "results"), "--name", "rendered",
            "--checkpoint-dir", str(tmp_path / "checkpoints")]
    assert main(argv) == 0
    record = json.loads((tmp_path / "results" / "rendered" / "results.json").read_text())
    assert record["data"]["name"] == SyntheticConfig(train=16, val=8).spec
    assert record["data"]["train_instances"] == 16 and record["data"]["flip_test"]
    assert record["train"]["epochs"] == 2 and record["rows"][1]["train_steps"] == 4  # the whole epochs holding 3 steps
    assert [row["representation"] for row in record["rows"]] == ["mean pose", "heatmap"]
    assert np.isfinite(record["rows"][1]["AP"]) and (tmp_path / "results" / "rendered" / "report.md").exists()
    checkpoint = tmp_path / "checkpoints" / "rendered" / "heatmap_64x64_seed0.pt"
    test_spec = "synthetic:train=16,val=8,test=6"
    argv = ["evaluate", "--checkpoint", str(checkpoint), "--data", test_spec, "--out", str(tmp_path / "ev"), "--quiet"]
    assert main(argv) == 0
    scored = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert scored["data"]["name"] == parse_synthetic(test_spec).spec and scored["data"]["instances"] == 6
    assert [row["representation"] for row in scored["rows"]] == ["mean pose", "heatmap"]
    assert scored["rows"][1]["mean_error_input_px"] != record["rows"][1]["mean_error_input_px"]  # other scenes

    argv = ["evaluate", "--checkpoint", str(checkpoint), "--data", "synthetic:test=0", "--out", str(tmp_path / "none")]
    capsys.readouterr()
    assert main(argv) == 2
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1 and "test=0" in message and "test scenes" in message
    assert not (tmp_path / "none").exists()
