"""The report of a tiny real run: every figure is a PNG, report.md links it, and the table has its rows."""
import json
import re
import shutil
import subprocess
import warnings
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from heatbench.cli import main
from heatbench.errors import HeatbenchError
from heatbench.report import FIGURES, REPORT, Entry, _comparisons, made_by, write_report
from heatbench.runner import last_fifth_change

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RUN_FILES = ("results.json", "predictions.npz", "baselines.npz", "table.md", "table.csv", "per_keypoint.csv",
             "curves.csv")
PREDICTION_FOLDER = "predictions"  # the COCO results JSON and DeepLabCut CSV of every trained model


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from tests.conftest import MOUSE_MINI

    root = tmp_path_factory.mktemp("report")
    argv = ["run", "--repr", "heatmap,simcc", "--res", "64", "--epochs", "2", "--eval-every", "1", "--seeds", "2",
            "--batch-size", "4",
            "--data", str(MOUSE_MINI), "--out", str(root / "results"), "--name", "tiny",
            "--checkpoint-dir", str(root / "checkpoints"), "--quiet"]
    assert main(argv) == 0
    return root / "results" / "tiny"


@pytest.fixture(scope="module")
def report(run_dir, tmp_path_factory):
    return write_report([run_dir], tmp_path_factory.mktemp("out") / "report")


def _section(markdown: str, title: str) -> str:
    return markdown.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def _table_rows(section: str) -> list[list[str]]:
    """The body rows of the first Markdown table in ``section``, split into stripped cells."""
    lines = [line for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def test_every_figure_is_a_non_empty_png_beside_the_report(report):
    assert report.name == REPORT and report.is_file()
    for name in FIGURES:
        data = (report.parent / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > len(PNG_SIGNATURE), name


def test_report_links_every_figure_relatively(report):
    markdown = report.read_text()
    for name in FIGURES:
        assert f"]({name})" in markdown


def test_table_has_one_row_per_representation_and_input(report):
    rows = _table_rows(_section(report.read_text(), "Results"))
    assert [(row[0], row[1]) for row in rows] == [("mean pose", "64x64"), ("heatmap", "64x64"), ("simcc", "64x64")]
    assert all("±" in row[3] for row in rows[1:])  # two seeds: the mean error carries its spread


def test_table_notes_state_each_rows_settings_at_its_input_size(run_dir):
    notes = (run_dir / "table.md").read_text().split("| representation", 1)[0]
    assert "- heatmap@64x64: " in notes and "decoder=" in notes
    assert "- simcc@64x64: label=onehot, split_ratio=3.0," in notes  # the 64x64 default, not the class's


def test_report_states_data_schedule_device_commit_and_command(run_dir, report):
    record = json.loads((run_dir / "results.json").read_text())
    provenance = _section(report.read_text(), "Where these numbers come from")
    for fact in ("mirror_mouse_mini", "epochs 2", "batch 4", "lr 0.001", "ResNet-18", record["device"],
                 record["git_commit"], record["command"]):
        assert fact in provenance


def test_a_merge_of_shards_names_each_sweep_once_and_its_arguments_as_bash_expands_them():
    shards = [0, 1, 2, 3, 5]
    record = {
        "command": " ".join(["python -m heatbench merge", *(f"runs/ref.shard-{i}-of-42" for i in shards),
                             "--out results/ref"]),
        "sources": [{"command": f"python -m heatbench run --seeds 3 --shard {i}/42 --resume",
                     "git_commit": "old" if i == 0 else "new", "device": "cpu"} for i in shards],
    }
    made = made_by(record)
    merge_command = made.split("`")[1]
    assert merge_command == "python -m heatbench merge runs/ref.shard-{0,1,2,3,5}-of-42 --out results/ref"
    assert subprocess.run(["bash", "-c", f"echo {merge_command}"], capture_output=True, text=True,
                          check=True).stdout.strip() == record["command"]
    assert made.endswith(" from 5 runs: `python -m heatbench run --seeds 3 --shard 0/42 --resume` at commit old "
                         "on cpu; `python -m heatbench run --seeds 3 --shard N/42 --resume` for N = 1-3, 5 at "
                         "commit new on cpu.")
    contiguous = dict(record, command="python -m heatbench merge " + " ".join(f"s-{i}" for i in range(21)))
    assert "merge s-{0..20}`" in made_by(contiguous)


def test_paired_comparison_states_a_winner_only_when_the_interval_excludes_zero(report):
    rows = _table_rows(_section(report.read_text(), "Paired comparisons"))
    assert [row[:3] for row in rows] == [["64x64", "mean pose", "heatmap"], ["64x64", "mean pose", "simcc"],
                                         ["64x64", "heatmap", "simcc"]]  # every row also against the mean pose
    for row in rows:
        low, high = map(float, re.fullmatch(r"\[(\S+), (\S+)\]", row[4]).groups())
        assert ("beats" in row[6]) == (low > 0 or high < 0)


def test_a_clear_difference_is_a_win_and_a_tie_is_not():
    generator = np.random.default_rng(0)
    images, keypoints = 40, 5
    image_ids, visible = np.arange(images), np.ones((images, keypoints))
    run = SimpleNamespace(record={"train": {"epochs": 1}, "data": {"flip_test": False}})

    def entry(label, errors, baseline=False):
        row = {"input": "64x64", "seeds": [0], **({"baseline": True} if baseline else {})}
        return Entry(label, run, row, errors[None], visible > 0, merged_pairs=None)

    accurate = 1 + 0.1 * generator.standard_normal((images, keypoints))
    tie = accurate[::-1].copy()  # the same errors on other images: no difference on average
    entries = [entry("mean pose", accurate + 4, baseline=True), entry("a", accurate), entry("b", tie)]
    verdicts = {tuple(row[1:3]): row[6] for row in _table_rows(_comparisons(entries, image_ids, visible))}
    assert verdicts == {("mean pose", "a"): "**a beats mean pose**", ("mean pose", "b"): "**b beats mean pose**",
                        ("a", "b"): "no significant difference"}


def test_report_into_the_run_directory_adds_files_and_keeps_the_run(run_dir, tmp_path):
    run = shutil.copytree(run_dir, tmp_path / "tiny")
    before = {name: (run / name).read_bytes() for name in RUN_FILES}
    write_report([run], run)
    assert {name: (run / name).read_bytes() for name in RUN_FILES} == before
    expected = {*RUN_FILES, PREDICTION_FOLDER, REPORT, *FIGURES}
    assert sorted(p.name for p in run.iterdir()) == sorted(expected)  # no staging left


def test_same_representation_in_two_runs_is_kept_twice_labelled_by_run(run_dir, tmp_path):
    again = shutil.copytree(run_dir, tmp_path / "again")
    record = json.loads((again / "results.json").read_text())
    (again / "results.json").write_text(json.dumps({**record, "run": "again"}))
    markdown = write_report([run_dir, again], tmp_path / "both").read_text()
    labels = [row[0] for row in _table_rows(_section(markdown, "Results"))]
    assert sorted(labels) == ["heatmap (again)", "heatmap (tiny)", "mean pose", "simcc (again)", "simcc (tiny)"]
    comparisons = _table_rows(_section(markdown, "Paired comparisons"))
    assert len(comparisons) == 6 + 4  # every pair of the four rows, and each of them against the one mean pose
    twins = [row for row in comparisons if {row[1], row[2]} == {"heatmap (tiny)", "heatmap (again)"}]
    assert twins[0][3:5] == ["+0", "[+0, +0]"] and twins[0][6] == "no significant difference"


def test_runs_evaluated_on_other_instances_are_refused(run_dir, tmp_path):
    other = shutil.copytree(run_dir, tmp_path / "other")
    with np.load(other / "predictions.npz") as predictions:
        arrays = dict(predictions)
    np.savez_compressed(other / "predictions.npz", **{**arrays, "image_ids": arrays["image_ids"] + 1})
    with pytest.raises(HeatbenchError, match="other instances"):
        write_report([run_dir, other], tmp_path / "mixed")


def test_a_failed_report_leaves_no_files(run_dir, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    calls = []
    real_savefig = Figure.savefig

    def savefig_then_fail(self, path, **kwargs):
        real_savefig(self, path, **kwargs)
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", savefig_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_report([run_dir], tmp_path / "fresh")
    assert list(tmp_path.iterdir()) == []
    run = shutil.copytree(run_dir, tmp_path / "tiny")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}  # it may already hold a report of its own
    calls.clear()
    with pytest.raises(OSError, match="disk full"):
        write_report([run], run)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_rows_over_a_third_of_the_mean_pose_error_are_named_in_a_warning_above_the_table(run_dir, tmp_path):
    record = json.loads((run_dir / "results.json").read_text())
    ratios = {row["representation"]: row["vs_mean_pose"] for row in record["rows"]}
    assert ratios["mean pose"] == 1
    assert all(ratio > 1 / 3 for name, ratio in ratios.items())  # two epochs on 8 frames learn nothing
    results = _section(write_report([run_dir], tmp_path / "as-run").read_text(), "Results")
    warning = results.split("|", 1)[0]
    assert "heatmap at 64x64" in warning and "simcc at 64x64" in warning and "mean pose at" not in warning
    learned = shutil.copytree(run_dir, tmp_path / "learned")
    for row in record["rows"]:
        if row["representation"] == "heatmap":
            row["vs_mean_pose"] = 0.2
        if row["representation"] == "simcc":
            row["vs_mean_pose"], row["train_vs_mean_pose"] = 0.45, 0.25
    (learned / "results.json").write_text(json.dumps(record))
    warning = _section(write_report([learned], tmp_path / "edited").read_text(), "Results").split("|", 1)[0]
    assert "simcc at 64x64 (0.45; fits its training frames, train 0.25)" in warning and "heatmap" not in warning
    assert "does not fit" in _section(write_report([run_dir], tmp_path / "again").read_text(), "Results")


def test_the_last_fifth_change_reads_the_curve_from_four_fifths_of_the_steps_on():
    curve = [{"step": step, "mean_error_input_px": error} for step, error in ((60, 9.0), (70, 4.0), (80, 2.0),
                                                                             (90, 1.9), (100, 1.5))]
    assert last_fifth_change(curve, 100) == pytest.approx(1.5 / 2.0 - 1)
    assert last_fifth_change(curve[:4], 100) == pytest.approx(1.9 / 2.0 - 1)
    assert last_fifth_change(curve[:3], 100) is None  # one point in the last fifth says nothing of its slope


def test_rows_still_falling_over_the_last_fifth_are_named_in_a_warning_above_the_table(run_dir, tmp_path):
    record = json.loads((run_dir / "results.json").read_text())
    assert "val change, last fifth" in (run_dir / "table.md").read_text()
    assert "were still learning" not in _section(write_report([run_dir], tmp_path / "as-run").read_text(), "Results")
    for row in record["rows"]:
        row["last_fifth_change"] = {"heatmap": -0.3, "simcc": -0.05}.get(row["representation"])
    edited = shutil.copytree(run_dir, tmp_path / "edited-run")
    (edited / "results.json").write_text(json.dumps(record))
    above_table = _section(write_report([edited], tmp_path / "edited").read_text(), "Results").split("|", 1)[0]
    warning = next(paragraph for paragraph in above_table.split("\n\n") if "were still learning" in paragraph)
    assert "heatmap at 64x64 (-30%)" in warning and "simcc" not in warning


def test_rows_that_put_left_and_right_at_one_point_are_named_in_a_warning_above_the_table(run_dir, tmp_path):
    assert "left and right at one point" not in (run_dir / "report.md").read_text()  # the mouse has no pairs
    paired = shutil.copytree(run_dir, tmp_path / "paired")
    record = json.loads((paired / "results.json").read_text())
    record["data"]["keypoint_names"][:2] = ["left_paw", "right_paw"]
    (paired / "results.json").write_text(json.dumps(record))
    with np.load(paired / "predictions.npz") as stored:
        arrays = {key: stored[key] for key in stored.files}
    for key in arrays:
        if key.startswith("heatmap") and key.endswith("/pred_input"):
            arrays[key][:, 1] = arrays[key][:, 0]  # both paws at one point
        if key.startswith("simcc") and key.endswith("/pred_input"):
            arrays[key][:, :2] = arrays[key.replace("pred_input", "target_input")][:, :2]  # each paw at its own
    np.savez(paired / "predictions.npz", **arrays)
    above_table = _section(write_report([paired], tmp_path / "report").read_text(), "Results").split("|", 1)[0]
    warning = next(paragraph for paragraph in above_table.split("\n\n") if "left and right at one point" in paragraph)
    assert "heatmap at 64x64 (100%)" in warning and "simcc" not in warning and "mean pose" not in warning


def test_learning_curves_hold_one_point_per_validation_for_every_seed(run_dir):
    curves = pd.read_csv(run_dir / "curves.csv")
    assert sorted(set(curves["representation"])) == ["heatmap", "simcc"]
    per_run = curves.groupby(["representation", "seed"])
    assert (per_run.size() == 2).all()  # --epochs 2 --eval-every 1
    assert (curves["step"] == curves["epoch"] * curves["step"].min()).all()  # steps per epoch, counted on
    table = pd.read_csv(run_dir / "table.csv").set_index("representation")
    last = curves[curves["epoch"] == 2].groupby("representation")["mean_error_input_px"].mean()
    assert np.allclose(last, table.loc[last.index, "mean_error_input_px"])  # the last point is the table's row


def _as_real(run_dir, path, factor):
    """A copy of ``run_dir`` whose trained rows claim ``factor`` times the error, as if run on real data."""
    real = shutil.copytree(run_dir, path)
    record = json.loads((real / "results.json").read_text())
    for row in record["rows"]:
        row["mean_error_input_px"] *= factor
    (real / "results.json").write_text(json.dumps({**record, "run": path.name}))
    return real


def test_error_budget_puts_floor_trained_and_real_error_side_by_side_per_representation(run_dir, tmp_path):
    from heatbench.report import _entries, _load_runs, _plot_error_budget

    real = _as_real(run_dir, tmp_path / "real", 3.0)
    runs, evaluation = _load_runs([run_dir])
    entries = _entries(runs, evaluation["visible"])
    real_runs, real_evaluation = _load_runs([real])
    real_entries = _entries(real_runs, real_evaluation["visible"])
    figure = _plot_error_budget(entries, {e.label: "C0" for e in entries}, real_entries)
    trained = [e.row for e in entries if not e.baseline]
    heights = [bar.get_height() for bar in figure.axes[0].patches]
    assert heights == pytest.approx([row["floor_px"] for row in trained]
                                    + [row["mean_error_input_px"] for row in trained]
                                    + [3 * row["mean_error_input_px"] for row in trained])
    assert (write_report([run_dir], tmp_path / "budget", [real]).parent / "error_budget.png").is_file()


def test_every_figure_keeps_its_axes_for_a_data_set_with_a_long_spec(run_dir, tmp_path):
    rendered = tmp_path / "rendered"
    shutil.copytree(run_dir, rendered)
    record = json.loads((rendered / "results.json").read_text())
    record["data"]["name"] = ("synthetic:train=4800,val=500,test=0,seed=0,blur=0.0,noise=0.0,distractors=0.7,"
                              "occluders=0.35")
    (rendered / "results.json").write_text(json.dumps(record))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="constrained_layout not applied")
        report = write_report([rendered], tmp_path / "report", [_as_real(run_dir, tmp_path / "real", 2.0)])
    assert "synthetic:train=4800" in _section(report.read_text(), "Where these numbers come from")


def test_error_budget_refuses_a_representation_twice_on_real_data(run_dir, tmp_path):
    twice = [_as_real(run_dir, tmp_path / name, 2.0) for name in ("real-a", "real-b")]
    with pytest.raises(HeatbenchError, match="heatmap at 64x64 is in more than one run directory"):
        write_report([run_dir], tmp_path / "budget", twice)


@pytest.mark.parametrize("low, high", [(0.4829, 0.4862), (24.5, 26.3), (0.5, 1100.0)])
def test_log_axes_label_their_ticks_with_plain_numbers_that_spell_the_tick_values(low, high):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from heatbench.report import _log_y

    figure = Figure()
    FigureCanvasAgg(figure)
    axis = figure.add_subplot()
    axis.plot([0, 1], [low, high])
    _log_y(axis)
    figure.canvas.draw()
    ticks = axis.yaxis.get_majorticklocs().tolist() + axis.yaxis.get_minorticklocs().tolist()
    labels = [label.get_text() for label in axis.yaxis.get_majorticklabels() + axis.yaxis.get_minorticklabels()]
    labelled = [(tick, label) for tick, label in zip(ticks, labels) if label and low <= tick <= high]
    assert len(labelled) >= 2
    assert all(float(label) == pytest.approx(tick, rel=1e-6) for tick, label in labelled), labelled
