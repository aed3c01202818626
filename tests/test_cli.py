"""The main job end to end on a tiny schedule, and its answers to bad input."""
import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
from tqdm import tqdm

from heatbench.cli import main

TINY = ["--res", "64", "--epochs", "1", "--batch-size", "4", "--quiet"]
ACCURACY_COLUMNS = ["mean_error_input_px", "mean_error_image_px", "pck@0.05", "pck@0.1", "pck@0.2", "AP", "AR"]
TABLE_COLUMNS = ["representation", "input", "output", "or_ir", "head_params", "total_params", "inference_gflops",
                 "train_seconds", "inference_ms", "mean_error_input_px", "pck@0.1", "AP", "floor_px"]


def _run(tmp_path, mouse_mini, name, *extra, quiet=True):
    tiny = TINY if quiet else [arg for arg in TINY if arg != "--quiet"]
    argv = ["run", "--repr", "heatmap,simcc", "--data", str(mouse_mini), "--out", str(tmp_path / "results"),
            "--name", name, "--checkpoint-dir", str(tmp_path / "checkpoints"), *tiny, *extra]
    assert main(argv) == 0
    return tmp_path / "results" / name


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from tests.conftest import MOUSE_MINI

    return _run(tmp_path_factory.mktemp("run"), MOUSE_MINI, "tiny")


def test_run_writes_table_csv_and_json_with_every_column(finished_run):
    table = pd.read_csv(finished_run / "table.csv")
    assert list(table["representation"]) == ["mean pose", "heatmap", "simcc"]
    assert set(TABLE_COLUMNS + ["vs_mean_pose", "train_steps"]) <= set(table.columns)
    baseline, trained = table.iloc[0], table.iloc[1:]
    assert baseline["vs_mean_pose"] == 1 and math.isnan(baseline["total_params"])  # no network
    assert (trained["vs_mean_pose"] == trained["mean_error_input_px"] / baseline["mean_error_input_px"]).all()
    assert (trained["total_params"] > trained["head_params"]).all()
    assert (trained["inference_gflops"] > 0).all() and (trained["train_seconds"] > 0).all()
    markdown = (finished_run / "table.md").read_text()
    assert "heatmap" in markdown and "simcc" in markdown and "floor (input px)" in markdown
    record = json.loads((finished_run / "results.json").read_text())
    assert set(record["representations"]) == {"heatmap@64x64", "simcc@64x64"}
    for key in ("git_commit", "libraries", "device", "train", "training_dtype", "seeds", "data", "baselines"):
        assert key in record
    assert record["training_dtype"] in ("bfloat16", "float32")
    assert record["representations"]["heatmap@64x64"]["config"]["sigma"] == 1  # the reference configs' σ at 64x64


def test_predictions_npz_holds_only_trained_models_and_baselines_npz_the_mean_pose(finished_run):
    with np.load(finished_run / "predictions.npz") as trained, np.load(finished_run / "baselines.npz") as baseline:
        trained_keys = {key.split("/")[0] for key in trained.files if "/" in key}
        assert trained_keys == {"heatmap_64x64_seed0", "simcc_64x64_seed0"}
        assert {key.split("/")[0] for key in baseline.files} == {"mean pose_64x64"}
        np.testing.assert_allclose(baseline["mean pose_64x64/target_input"], trained["heatmap_64x64_seed0/target_input"],
                                   rtol=1e-6)  # the same targets, the network's in float32


def test_run_leaves_a_checkpoint_per_representation(finished_run):
    checkpoints = sorted(p.name for p in (finished_run.parent.parent / "checkpoints" / "tiny").iterdir())
    assert checkpoints == ["heatmap_64x64_seed0.pt", "simcc_64x64_seed0.pt"]


def test_same_command_and_seed_give_identical_accuracy(finished_run, tmp_path, mouse_mini):
    again = _run(tmp_path, mouse_mini, "tiny")
    first, second = (pd.read_csv(d / "table.csv")[ACCURACY_COLUMNS] for d in (finished_run, again))
    pd.testing.assert_frame_equal(first, second)


@pytest.mark.parametrize("argv, message", [
    (["run", "--repr", "no-such-repr"], "unknown representation 'no-such-repr'; available:"),
    (["run", "--repr", "heatmap", "--res", "64y"], "--res: '64y' is not a size"),
    (["run", "--repr", "heatmap", "--data", "missing.csv"], "missing.csv"),
    (["run", "--repr", "heatmap", "--set", "heatmap.no_field=1"], "no_field"),
    (["run", "--repr", "heatmap", "--steps", "0"], "--steps 0: must be >= 1"),
    (["floor", "--repr", "no-such-repr"], "unknown representation"),
])
def test_bad_input_is_one_line_exit_2_and_no_results(argv, message, tmp_path, capsys):
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and "\n" not in error
    assert not (tmp_path / "out").exists()


def test_malformed_csv_names_the_file_and_leaves_no_results(tmp_path, mouse_mini, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("bodyparts,nose,nose\n" + "img.png,1,2\n")
    argv = ["run", "--repr", "heatmap", "--data", str(bad), "--out", str(tmp_path / "out"), *TINY]
    assert main(argv) == 2
    assert "bad.csv" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_failed_run_keeps_the_previous_results(finished_run, tmp_path, mouse_mini, monkeypatch):
    previous = tmp_path / "results" / "tiny"
    shutil.copytree(finished_run, previous)
    import heatbench.train

    def broken(*args, **kwargs):
        raise FloatingPointError("simulated divergence")

    monkeypatch.setattr(heatbench.train, "train", broken)
    with pytest.raises(FloatingPointError):
        _run(tmp_path, mouse_mini, "tiny")
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["tiny"]
    assert (previous / "table.csv").read_bytes() == (finished_run / "table.csv").read_bytes()


class RecordingBar(tqdm):
    """The job-wide progress bar, remembering (total, count) when it closes."""
    closed: list[tuple[float, float]] = []

    def close(self):
        if not self.disable:  # tqdm closes again when collected, as a disabled bar
            RecordingBar.closed.append((self.total, self.n))
        super().close()


def test_interrupted_run_resumes_from_its_last_checkpoint_and_matches_an_uninterrupted_one(
        tmp_path, mouse_mini, monkeypatch):
    import heatbench.runner
    import heatbench.train

    def run(name, *extra, quiet=True):
        argv = ["run", "--repr", "heatmap", "--res", "64", "--epochs", "2", "--batch-size", "4",
                "--data", str(mouse_mini), "--out", str(tmp_path / "results"), "--name", name,
                "--checkpoint-dir", str(tmp_path / "ck"), *extra, *(["--quiet"] if quiet else [])]
        assert main(argv) == 0
        (row,) = json.loads((tmp_path / "results" / name / "results.json").read_text())["seed_rows"]
        return row

    uninterrupted = run("whole")
    save = heatbench.train._save_checkpoint

    def save_then_die(path, state):
        save(path, state)
        raise KeyboardInterrupt  # after the first epoch's checkpoint

    monkeypatch.setattr(heatbench.train, "_save_checkpoint", save_then_die)
    monkeypatch.setattr(heatbench.train, "CHECKPOINT_SECONDS", 0.0)  # a checkpoint after every epoch
    with pytest.raises(KeyboardInterrupt):
        run("cut")
    assert not (tmp_path / "results" / "cut").exists()  # nothing half-written
    monkeypatch.setattr(heatbench.train, "_save_checkpoint", save)
    monkeypatch.setattr(heatbench.runner, "tqdm", RecordingBar)
    monkeypatch.setattr(RecordingBar, "closed", [])
    resumed = run("cut", "--resume", quiet=False)
    assert resumed["epoch_losses"] == uninterrupted["epoch_losses"]  # the epoch before the cut included
    for column in ACCURACY_COLUMNS:
        assert resumed[column] == uninterrupted[column], column
    assert resumed["train_seconds"] > 0
    ((total, count),) = RecordingBar.closed  # the steps done before the cut left the bar: it ends full
    assert count == pytest.approx(total) and total > 0


def test_the_progress_bar_weighs_each_step_by_its_estimated_seconds(tmp_path, mouse_mini, monkeypatch):
    import heatbench.runner

    seconds = {"heatmap": 1.0, "simcc": 3.0}
    monkeypatch.setattr(heatbench.runner, "estimate_step_seconds", lambda representation, *_: seconds[
        representation.name])
    monkeypatch.setattr(heatbench.runner, "tqdm", RecordingBar)
    monkeypatch.setattr(RecordingBar, "closed", [])
    run_dir = _run(tmp_path, mouse_mini, "shown", quiet=False)
    steps = {row["representation"]: row["train_steps"]
             for row in json.loads((run_dir / "results.json").read_text())["seed_rows"]}
    ((total, count),) = RecordingBar.closed
    assert total == count == steps["heatmap"] * 1.0 + steps["simcc"] * 3.0


def test_showing_the_progress_bar_changes_no_trained_value(finished_run, tmp_path, mouse_mini):
    # the bar's estimate trains throwaway models first, drawing from the global generator
    shown = _run(tmp_path, mouse_mini, "shown", quiet=False)
    quiet, shown = (pd.read_csv(d / "table.csv")[ACCURACY_COLUMNS] for d in (finished_run, shown))
    pd.testing.assert_frame_equal(quiet, shown)


def test_heatmap_command_draws_a_checkpoint_at_native_resolution(finished_run, tmp_path, mouse_mini):
    checkpoint = finished_run.parent.parent / "checkpoints" / "tiny" / "simcc_64x64_seed0.pt"
    image = mouse_mini.parent / "labeled-data" / "img01.png"
    argv = ["heatmap", "--repr", "simcc", "--checkpoint", str(checkpoint), "--image", str(image), "--keypoint", "3",
            "--out", str(tmp_path)]
    assert main(argv) == 0
    (picture,) = tmp_path.iterdir()
    assert picture.name == "simcc_k3_192x192.png"  # SimCC's x/y bins at split ratio 3 on a 64x64 input
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_heatmap_command_refuses_a_checkpoint_of_another_representation(finished_run, tmp_path, mouse_mini, capsys):
    checkpoint = finished_run.parent.parent / "checkpoints" / "tiny" / "simcc_64x64_seed0.pt"
    image = mouse_mini.parent / "labeled-data" / "img01.png"
    assert main(["heatmap", "--repr", "nerpe", "--checkpoint", str(checkpoint), "--image", str(image)]) == 2
    assert "holds a 'simcc' model" in capsys.readouterr().err


@pytest.mark.parametrize("name", __import__("heatbench").available_representations())
def test_every_representation_trains_through_run(name, tmp_path, mouse_mini):
    """A smoke test of the whole job; that training learns is tests/test_learnability.py's to show."""
    argv = ["run", "--repr", name, "--res", "64", "--epochs", "4", "--batch-size", "2", "--quiet",
            "--data", str(mouse_mini), "--out", str(tmp_path), "--name", "falling",
            "--checkpoint-dir", str(tmp_path / "ck")]
    assert main(argv) == 0
    (row,) = json.loads((tmp_path / "falling" / "results.json").read_text())["seed_rows"]
    losses = row["epoch_losses"]
    assert len(losses) == 4 and all(math.isfinite(loss) for loss in losses)
    for variant in row["decoding_variants"]:  # e.g. NerPE's progressive decoding, on the same trained outputs
        assert 0 <= row[f"{variant}_agreement"] <= 1 and row[f"{variant}_gflops"] > 0
