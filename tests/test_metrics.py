"""Metrics on synthetic predictions whose answers are known."""
from pathlib import Path

import numpy as np
import pytest

from heatbench.data import KeypointDataset
from heatbench.metrics import decoding_agreement, evaluate_predictions, oks_ap, pck, per_keypoint_metrics


def _dataset(n=6, k=4, with_heads=False) -> KeypointDataset:
    rng = np.random.default_rng(0)
    keypoints = rng.uniform(20, 80, size=(n, k, 2))
    visible = np.ones((n, k), dtype=np.float32)
    visible[0, 0] = 0
    keypoints[0, 0] = np.nan
    return KeypointDataset(
        name="synthetic", source=Path("synthetic.json"), image_paths=[Path(f"{i}.png") for i in range(n)],
        image_ids=np.arange(n, dtype=np.int64), keypoints=keypoints, visible=visible,
        boxes=np.tile([10.0, 10.0, 80.0, 80.0], (n, 1)), areas=np.full(n, 6400.0),
        keypoint_names=[f"k{i}" for i in range(k)], flip_pairs=None, sigmas=np.full(k, 0.05),
        sigma_note="0.05 for every keypoint", head_boxes=np.tile([0.0, 0.0, 30.0, 40.0], (n, 1)) if with_heads else None)


def test_perfect_predictions_score_ap_one_and_zero_error():
    data = _dataset(with_heads=True)
    perfect = np.nan_to_num(data.keypoints)
    metrics = evaluate_predictions(data, perfect, perfect, perfect, np.ones(data.visible.shape))
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AR"] == pytest.approx(1.0)
    assert metrics["mean_error_image_px"] == 0 and metrics["pck@0.05"] == 1 and metrics["pckh@0.1"] == 1


def test_errors_average_over_labelled_keypoints_only():
    data = _dataset()
    shifted = np.nan_to_num(data.keypoints) + np.array([3.0, 4.0])  # every error is exactly 5 px
    metrics = evaluate_predictions(data, shifted, shifted, np.nan_to_num(data.keypoints), np.ones(data.visible.shape))
    assert metrics["mean_error_image_px"] == pytest.approx(5.0)
    assert metrics["mean_error_input_px"] == pytest.approx(5.0)


def test_pck_counts_errors_below_threshold_times_box_size():
    errors = np.array([[1.0, 7.9, 8.1, 100.0]])
    assert pck(errors, np.ones((1, 4)), np.array([80.0]), 0.1) == pytest.approx(0.5)  # threshold 8 px


def test_far_predictions_score_ap_near_zero():
    data = _dataset()
    far = np.nan_to_num(data.keypoints) + 60.0
    assert oks_ap(data, far, np.ones(data.visible.shape))["AP"] < 0.05


def test_decodings_agree_when_within_one_grid_step_on_each_axis():
    main = np.zeros((1, 4, 2))
    other = np.array([[[0.25, -0.5], [0.25, 0.75], [0.5, 0.0], [9.0, 9.0]]])  # steps: x 0.25, y 0.5
    visible = np.array([[1, 1, 1, 0]])  # the fourth, far off, is unlabelled and does not count
    assert decoding_agreement(other, main, (0.25, 0.5), visible) == pytest.approx(1 / 3)


def test_per_keypoint_metrics_weighted_by_labelled_count_give_the_overall_ones():
    data = _dataset(n=8)
    rng = np.random.default_rng(1)
    predicted = np.nan_to_num(data.keypoints) + rng.normal(0, 4, size=data.keypoints.shape)
    overall = evaluate_predictions(data, predicted, predicted, data.keypoints, np.ones(data.visible.shape))
    entries = per_keypoint_metrics(data, predicted, predicted, data.keypoints)
    assert [entry["keypoint"] for entry in entries] == data.keypoint_names
    assert [entry["labelled"] for entry in entries] == [7, 8, 8, 8]  # keypoint 0 of instance 0 is unlabelled
    weights = np.array([entry["labelled"] for entry in entries])
    for key in ("mean_error_image_px", "mean_error_input_px", "pck@0.1"):
        values = np.array([entry[key] for entry in entries])
        assert (weights * values).sum() / weights.sum() == pytest.approx(overall[key]), key


def test_per_keypoint_oks_is_cocoevals_term_for_that_keypoint():
    data = _dataset(n=1, k=2)
    shifted = np.nan_to_num(data.keypoints) + np.array([3.0, 4.0])  # 5 px off
    _, second = per_keypoint_metrics(data, shifted, shifted, data.keypoints)
    assert second["oks"] == pytest.approx(np.exp(-25 / (2 * 6400 * (2 * 0.05) ** 2)))
    perfect = per_keypoint_metrics(data, np.nan_to_num(data.keypoints), data.keypoints, data.keypoints)
    assert perfect[1]["oks"] == pytest.approx(1.0) and np.isnan(perfect[0]["oks"])  # never labelled: no mean
