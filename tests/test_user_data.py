"""Users' own data end to end on a tiny schedule: their splits, scoring a checkpoint with `evaluate`,
per-keypoint results, prediction files in COCO's and DeepLabCut's formats, and the one-line answers to bad
input."""
import contextlib
import io
import json

import numpy as np
import pandas as pd
import pytest
import torch

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from heatbench.cli import main
from heatbench.coords import canonical_to_pixel_centre
from heatbench.data import load_dataset
from heatbench.exports import dlc_predictions
from heatbench.metrics import coco_results, oks_ap
from heatbench.splits import SplitSpec, make_split
from tests.layouts import (DLC_BAD_INPUTS, MOUSE_MINI, SECOND_MOUSE_SHIFT, coco_set, dlc_bad_inputs, dlc_project,
                           train_val_pair)

TINY = ["--res", "64", "--epochs", "1", "--batch-size", "4", "--quiet"]
ACCURACY_COLUMNS = ["mean_error_input_px", "mean_error_image_px", "pck@0.05", "pck@0.1", "pck@0.2", "AP", "AR"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return train_val_pair(tmp_path_factory.mktemp("pair"))


@pytest.fixture(scope="module")
def pair_run(pair, tmp_path_factory):
    """A heatmap run trained on train.csv and validated on val.csv."""
    root = tmp_path_factory.mktemp("pair_run")
    train, val = pair
    argv = ["run", "--repr", "heatmap", "--data", str(train), "--val-data", str(val), "--out", str(root / "results"),
            "--name", "pair", "--checkpoint-dir", str(root / "checkpoints"), *TINY]
    assert main(argv) == 0
    return root


def test_val_data_is_the_validation_set_and_the_split_is_stored_by_image_name(pair_run, pair):
    record = json.loads((pair_run / "results" / "pair" / "results.json").read_text())
    assert record["data"]["train_instances"] == 6 and record["data"]["val_instances"] == 2
    assert record["data"]["split"] == "validation data val.csv" and record["data"]["val_fraction"] is None
    assert record["split"]["method"] == "val_data"
    assert record["split"]["train_images"] == [f"labeled-data/img0{n}.png" for n in range(1, 7)]
    assert record["split"]["val_images"] == ["labeled-data/img07.png", "labeled-data/img08.png"]


def test_per_keypoint_results_are_in_their_csv_and_in_results_json(pair_run):
    run = pair_run / "results" / "pair"
    table = pd.read_csv(run / "per_keypoint.csv")
    record = json.loads((run / "results.json").read_text())
    names = record["data"]["keypoint_names"]
    assert list(table.columns) == ["representation", "input", "keypoint", "labelled", "mean_error_input_px",
                                   "mean_error_image_px", "pck@0.1", "oks"]
    assert list(table["representation"]) == ["mean pose"] * len(names) + ["heatmap"] * len(names)
    assert list(table["keypoint"][:len(names)]) == names
    pd.testing.assert_frame_equal(pd.DataFrame(record["per_keypoint"]), table, check_dtype=False)
    heatmap = table[table["representation"] == "heatmap"]
    (row,) = record["seed_rows"]
    assert (heatmap["labelled"] * heatmap["mean_error_input_px"]).sum() / heatmap["labelled"].sum() == pytest.approx(
        row["mean_error_input_px"])
    assert "per_keypoint" not in record["rows"][1]  # the table's rows leave it to per_keypoint.csv


def test_evaluate_scores_a_runs_checkpoint_to_the_runs_metrics(pair_run, pair, tmp_path):
    checkpoint = pair_run / "checkpoints" / "pair" / "heatmap_64x64_seed0.pt"
    meta = torch.load(checkpoint, weights_only=False)["meta"]
    assert meta["representation"] == "heatmap" and tuple(meta["input_size"]) == (64, 64)
    assert meta["keypoint_names"] == load_dataset(pair[0]).keypoint_names and meta["config"]["sigma"] == 1
    argv = ["evaluate", "--checkpoint", str(checkpoint), "--data", str(pair[1]), "--out", str(tmp_path / "ev"),
            "--quiet"]
    assert main(argv) == 0
    run_record = json.loads((pair_run / "results" / "pair" / "results.json").read_text())
    baseline, row = json.loads((tmp_path / "ev" / "results.json").read_text())["rows"]
    (run_row,), run_baseline = run_record["seed_rows"], run_record["rows"][0]
    for column in ACCURACY_COLUMNS + ["total_params", "inference_gflops", "floor_px", "output", "train_steps"]:
        assert row[column] == run_row[column], column
    for column in ACCURACY_COLUMNS:  # the training set's mean pose, carried by the checkpoint
        assert baseline[column] == run_baseline[column], column
    assert row["vs_mean_pose"] == run_record["rows"][1]["vs_mean_pose"] and row["train_vs_mean_pose"] is None
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "ev" / "per_keypoint.csv"),
                                  pd.read_csv(pair_run / "results" / "pair" / "per_keypoint.csv"))
    assert _headers(tmp_path / "ev" / "table.md") == _headers(pair_run / "results" / "pair" / "table.md")


def _headers(table):
    line = next(line for line in table.read_text().splitlines() if line.startswith("| representation"))
    return [cell.strip() for cell in line.split("|")]


def test_run_with_a_stored_split_trains_and_validates_on_the_same_images(pair_run, tmp_path):
    stored = pair_run / "results" / "pair" / "results.json"
    argv = ["run", "--repr", "heatmap", "--data", str(MOUSE_MINI), "--split", str(stored), "--out", str(tmp_path),
            "--name", "again", "--checkpoint-dir", str(tmp_path / "checkpoints"), *TINY]
    assert main(argv) == 0
    first, again = (json.loads(path.read_text()) for path in (stored, tmp_path / "again" / "results.json"))
    assert again["split"]["method"] == "file" and again["data"]["split"] == "stored in results.json"
    assert again["split"]["train_images"] == first["split"]["train_images"]
    assert again["split"]["val_images"] == first["split"]["val_images"]
    for column in ACCURACY_COLUMNS:  # the same frames in the same order: the same study, mean pose and model
        assert [row[column] for row in again["rows"]] == [row[column] for row in first["rows"]], column


def test_a_stored_split_is_reused_image_for_image(tmp_path):
    data = load_dataset(MOUSE_MINI)
    drawn = make_split(data, SplitSpec(val_fraction=0.25, seed=3))
    assert drawn.record["method"] == "random" and len(drawn.record["val_images"]) == 2
    stored = tmp_path / "results.json"
    stored.write_text(json.dumps({"split": drawn.record}))
    reused = make_split(data, SplitSpec(split_file=stored))
    assert reused.train.image_paths == drawn.train.image_paths and reused.val.image_paths == drawn.val.image_paths
    assert reused.record["val_images"] == drawn.record["val_images"]
    assert make_split(data, SplitSpec(val_fraction=0.25, seed=4)).record["val_images"] != drawn.record["val_images"]


def _other_keypoints(tmp_path, pair):
    lines = pair[1].read_text().splitlines()
    lines[1] = lines[1].replace("nose_top", "snout_top")
    path = pair[1].parent / "renamed.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def _not_a_checkpoint(tmp_path, pair):
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, path)
    return path


@pytest.mark.parametrize("case, message", [
    ("val-data with other keypoints", "keypoint names differ"),
    ("val-data with a val fraction", "cannot be combined"),
    ("stored split naming missing images", "not in"),
    ("checkpoint that is not heatbench's", "not a heatbench run checkpoint"),
    ("file that is not a checkpoint", "not a heatbench run checkpoint"),
    ("evaluate on other keypoints", "keypoint names differ"),
])
def test_bad_input_is_one_line_exit_2_and_no_results(case, message, pair, pair_run, tmp_path, capsys):
    out = tmp_path / "out"
    checkpoint = pair_run / "checkpoints" / "pair" / "heatmap_64x64_seed0.pt"
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train_images": ["labeled-data/img01.png"], "val_images": ["elsewhere.png"]}))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint")
    run = ["run", "--repr", "heatmap", "--data", str(pair[0]), "--out", str(out), *TINY]
    argv = {
        "val-data with other keypoints": run + ["--val-data", str(_other_keypoints(tmp_path, pair))],
        "val-data with a val fraction": run + ["--val-data", str(pair[1]), "--val-fraction", "0.5"],
        "stored split naming missing images": run + ["--split", str(split)],
        "checkpoint that is not heatbench's": ["evaluate", "--checkpoint", str(_not_a_checkpoint(tmp_path, pair)),
                                               "--data", str(pair[1]), "--out", str(out)],
        "file that is not a checkpoint": ["evaluate", "--checkpoint", str(garbage), "--data", str(pair[1]),
                                          "--out", str(out)],
        "evaluate on other keypoints": ["evaluate", "--checkpoint", str(checkpoint), "--data",
                                        str(_other_keypoints(tmp_path, pair)), "--out", str(out)],
    }[case]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and "\n" not in error, error
    assert not out.exists()


@pytest.mark.parametrize("case", DLC_BAD_INPUTS)
def test_bad_dlc_data_stops_run_with_one_line_exit_2_and_no_results(case, tmp_path, capsys):
    path, file_name, text = dlc_bad_inputs(tmp_path)[case]
    out = tmp_path / "out"
    assert main(["run", "--repr", "heatmap", "--data", str(path), "--out", str(out), *TINY]) == 2
    error = capsys.readouterr().err.strip()
    assert file_name in error and text in error and "\n" not in error
    assert not out.exists()


def test_two_images_train_on_one_and_validate_on_the_other(tmp_path):
    train_val_pair(tmp_path)  # for its labeled-data/ folder
    lines = MOUSE_MINI.read_text().splitlines()
    one, other = tmp_path / "one.csv", tmp_path / "other.csv"
    one.write_text("\n".join(lines[:4]) + "\n")
    other.write_text("\n".join(lines[:3] + lines[4:5]) + "\n")
    split = make_split(load_dataset(one), SplitSpec(val_data=str(other)))
    assert split.train.image_names() == ["labeled-data/img01.png"]
    assert split.val.image_names() == ["labeled-data/img02.png"]


@pytest.fixture(scope="module")
def coco_run(tmp_path_factory):
    """A heatmap run on a COCO set laid out as set/annotations/*.json beside set/images/, trained on two of its
    images and validated on the other two, with no --image-root."""
    root = tmp_path_factory.mktemp("coco_run")
    train = coco_set(root / "set", "person_keypoints_train", images=[785, 40083])
    val = coco_set(root / "set", "person_keypoints_val", images=[196141, 197388])
    argv = ["run", "--repr", "heatmap", "--data", str(train), "--val-data", str(val), "--out", str(root / "results"),
            "--name", "coco", "--checkpoint-dir", str(root / "checkpoints"), *TINY]
    assert main(argv) == 0
    return root


def _coco_ap(annotations, results):
    """COCOeval's keypoint AP of a results file against an annotation file, as a user would compute it."""
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO(str(annotations))
        evaluation = COCOeval(ground_truth, ground_truth.loadRes(str(results)), iouType="keypoints")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation.stats[0]


def test_coco_results_json_scored_by_cocoeval_gives_the_tables_ap(coco_run):
    run = coco_run / "results" / "coco"
    record = json.loads((run / "results.json").read_text())
    assert record["data"]["image_root"] == str(coco_run / "set" / "images")  # found beside annotations/
    results = run / "predictions" / "heatmap_64x64_seed0.coco.json"
    entries = json.loads(results.read_text())
    assert len(entries) == 9 and {entry["image_id"] for entry in entries} == {196141, 197388}
    assert set(entries[0]) == {"image_id", "category_id", "keypoints", "score"} and len(entries[0]["keypoints"]) == 51
    (row,) = record["seed_rows"]
    annotations = coco_run / "set" / "annotations" / "person_keypoints_val.json"
    assert _coco_ap(annotations, results) == pytest.approx(row["AP"], abs=1e-12)


def test_evaluate_with_the_flip_test_gives_a_coco_runs_metrics_and_results_file_back(coco_run, tmp_path):
    checkpoint = coco_run / "checkpoints" / "coco" / "heatmap_64x64_seed0.pt"
    val = coco_run / "set" / "annotations" / "person_keypoints_val.json"
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--data", str(val), "--out", str(tmp_path / "ev"),
                 "--quiet"]) == 0
    run = coco_run / "results" / "coco"
    record = json.loads((run / "results.json").read_text())
    assert record["data"]["flip_test"]  # COCO names left/right pairs
    (run_row,), (_, row) = record["seed_rows"], json.loads((tmp_path / "ev" / "results.json").read_text())["rows"]
    for column in ACCURACY_COLUMNS:
        assert row[column] == run_row[column], column
    name = "heatmap_64x64_seed0.coco.json"
    assert (tmp_path / "ev" / "predictions" / name).read_text() == (run / "predictions" / name).read_text()


def test_coco_results_of_good_predictions_score_in_cocoeval_as_in_the_table(tmp_path):
    annotations = coco_set(tmp_path)
    data = load_dataset(annotations)
    rng = np.random.default_rng(0)
    predicted = np.nan_to_num(data.keypoints) + rng.normal(0, 6, size=data.keypoints.shape)
    scores = rng.uniform(0.5, 1, size=data.visible.shape)
    results = tmp_path / "results.json"
    results.write_text(json.dumps(coco_results(data, predicted, scores)))
    ap = oks_ap(data, predicted, scores)["AP"]
    assert 0.2 < ap < 0.95
    assert _coco_ap(annotations, results) == pytest.approx(ap, abs=1e-12)


def test_dlc_data_get_a_deeplabcut_predictions_csv_keyed_by_image_path(pair_run):
    run = pair_run / "results" / "pair"
    table = pd.read_csv(run / "predictions" / "heatmap_64x64_seed0.csv", header=[0, 1, 2], index_col=0)
    assert list(table.columns.names) == ["scorer", "bodyparts", "coords"]
    assert list(table.index) == ["labeled-data/img07.png", "labeled-data/img08.png"]
    assert list(table.columns[:3]) == [("heatbench", "paw1LH_top", axis) for axis in ("x", "y", "likelihood")]
    with np.load(run / "predictions.npz") as stored:
        predicted, scores = stored["heatmap_64x64_seed0/pred_image"], stored["heatmap_64x64_seed0/scores"]
    values = table.to_numpy().reshape(2, -1, 3)
    np.testing.assert_allclose(values[..., :2], canonical_to_pixel_centre(predicted))
    np.testing.assert_allclose(values[..., 2], scores)
    assert (run / "predictions" / "heatmap_64x64_seed0.coco.json").is_file()


def test_multi_animal_predictions_csv_has_an_individuals_row_and_one_row_per_image(tmp_path):
    data = load_dataset(dlc_project(tmp_path))
    path = tmp_path / "predictions.csv"
    path.write_text(dlc_predictions(data, data.keypoints, np.ones(data.visible.shape)).to_csv())
    table = pd.read_csv(path, header=[0, 1, 2, 3], index_col=0)
    assert list(table.columns.names) == ["scorer", "individuals", "bodyparts", "coords"]
    assert len(table) == 8 and table.index[4] == "labeled-data/video2/img05.png"
    assert list(dict.fromkeys(table.columns.get_level_values("individuals"))) == ["animal", "m1", "m2"]
    m1, m2 = (table.loc["labeled-data/video2/img05.png", ("heatbench", owner, "nose_top", "x")]
              for owner in ("m1", "m2"))
    assert m2 - m1 == pytest.approx(SECOND_MOUSE_SHIFT)
    assert np.isnan(table.loc["labeled-data/video2/img07.png", ("heatbench", "m2", "nose_top", "x")])


def test_data_command_prints_what_a_run_would_load(tmp_path, capsys):
    config = dlc_project(tmp_path / "project")
    assert main(["data", str(config)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"data:       mini (dlc) from {config}"
    assert lines[1] == f"image root: {tmp_path / 'project'}"
    assert lines[2:4] == ["images:     8", "instances:  10 (3 individuals: animal, m1, m2)"]
    assert lines[4].startswith("keypoints:  17: paw1LH_top, paw2LF_top")
    assert lines[5] == "labelled:   97.6% of keypoint slots (166 of 170)"
    assert lines[-1] == "split:      20% val, seed 0: train 6 images / 7 instances, val 2 images / 3 instances"
    annotations = coco_set(tmp_path / "coco")
    assert main(["data", str(annotations), "--val-fraction", "0.5", "--split-seed", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == f"image root: {tmp_path / 'coco' / 'images'}" and lines[3] == "instances:  12"
    assert lines[-1].startswith("split:      50% val, seed 1: train 2 images")


def test_data_command_answers_bad_input_with_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "labeled-data" / "video1").mkdir(parents=True)
    (tmp_path / "config.yaml").write_text("Task: empty\nbodyparts:\n- nose\n")
    assert main(["data", str(tmp_path / "config.yaml")]) == 2
    error = capsys.readouterr().err.strip()
    assert "config.yaml: no CollectedData_*.h5 or .csv" in error and "\n" not in error
