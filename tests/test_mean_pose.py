"""The mean-pose baseline: what a model that looks at no image scores, the bar every trained row must clear."""
import numpy as np

from heatbench.data import TopDownDataset, load_dlc_csv
from heatbench.runner import with_baselines
from heatbench.train import mean_pose

SIZE = (64, 64)


def test_mean_pose_predicts_every_instance_at_the_training_crops_mean_keypoints(mouse_mini):
    dataset = load_dlc_csv(mouse_mini)
    train_set, val_set = dataset.split(0.25, seed=0)
    crops = TopDownDataset(train_set, SIZE, train=False)
    keypoints, visible = zip(*(crops.geometry(index)[1:] for index in range(len(crops))))
    keypoints, visible = np.stack(keypoints), np.stack(visible)
    expected = (keypoints * visible[..., None]).sum(0) / visible.sum(0)[:, None]

    baseline = mean_pose(train_set, val_set, SIZE)
    predicted = baseline["predictions"]["pred_input"]
    assert predicted.shape == (len(val_set), dataset.num_keypoints, 2)
    np.testing.assert_allclose(predicted, np.broadcast_to(expected, predicted.shape))
    assert 0 < baseline["mean_error_input_px"] < SIZE[0] and 0 <= baseline["pck@0.1"] <= 1
    train_distances = np.linalg.norm(keypoints - expected, axis=-1)
    np.testing.assert_allclose(baseline["train_mean_error_input_px"], train_distances[visible > 0].mean())


def test_mean_pose_maps_back_to_each_images_own_crop(mouse_mini):
    train_set, val_set = load_dlc_csv(mouse_mini).split(0.25, seed=0)
    predictions = mean_pose(train_set, val_set, SIZE)["predictions"]
    crops = TopDownDataset(val_set, SIZE, train=False)
    for index in range(len(val_set)):
        affine = crops.geometry(index)[0]  # image -> input
        back = predictions["pred_image"][index] @ affine[:, :2].T + affine[:, 2]
        np.testing.assert_allclose(back, predictions["pred_input"][index], atol=1e-6)


def test_no_mean_pose_where_a_keypoint_is_never_labelled_in_training(mouse_mini):
    train_set, val_set = load_dlc_csv(mouse_mini).split(0.25, seed=0)
    train_set.visible[:, 0] = 0
    train_set.keypoints[:, 0] = np.nan
    assert mean_pose(train_set, val_set, SIZE) is None


def test_every_row_is_compared_with_the_mean_pose_on_validation_and_on_its_training_frames():
    baseline = {"representation": "mean pose", "input": "64x64", "mean_error_input_px": 4.0,
                "train_mean_error_input_px": 5.0}
    fitted = {"representation": "a", "input": "64x64", "mean_error_input_px": 2.0, "train_mean_error_input_px": 0.5}
    older = {"representation": "b", "input": "64x64", "mean_error_input_px": 1.0}  # a run without the fit
    table = with_baselines([fitted, older], [baseline])
    assert [row["representation"] for row in table] == ["mean pose", "a", "b"]
    assert [row["vs_mean_pose"] for row in table] == [1.0, 0.5, 0.25]
    assert [row["train_vs_mean_pose"] for row in table] == [1.0, 0.1, None]
