"""The report of one or more run directories: ``report.md`` with its table, figures and paired comparisons.

``write_report`` reads each directory's ``results.json`` (rows, provenance), ``predictions.npz`` (every
trained seed's keypoints) and ``baselines.npz`` (the mean pose's), and writes beside ``report.md`` six PNG
figures: learning curves, accuracy against input resolution, the distribution of keypoint error, cost
against accuracy, error per keypoint, and the error budget (the codec floor, the trained error and, for runs
given on real data, the error there). Errors are Euclidean over labelled keypoints of the validation split,
in input pixels (the crop the network sees) unless a figure says image pixels, the unit that stays the same
across resolutions. Spreads are sample standard deviations over seeds.

Directories are combined row by row. A representation x input present in two directories is kept twice and
labelled by run; directories evaluated on different instances are refused, since their numbers do not
compare. Two rows are compared pairwise (``stats.paired_bootstrap``, seed-mean error per keypoint) when they
share the input size, the seeds, the training schedule and the flip test (ours: the schedule and flip test
are part of "trained alike").

Figures are drawn on ``matplotlib.figure.Figure`` objects with the Agg canvas, so no backend or pyplot state
is touched. The files appear all at once: a fresh output directory through ``results.atomic_directory``;
into an existing one (a run directory) each file is renamed into place, ``report.md`` last, so that it never
links a figure that is not there yet.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter
from tabulate import tabulate

from .data.dataset import flip_pairs_from_names
from .errors import HeatbenchError
from .metrics import keypoint_errors, merged_pairs
from .parsing import size_name
from .results import BASELINE_PREDICTIONS, PREDICTIONS, atomic_directory, format_cell
from .stats import CONFIDENCE, paired_bootstrap

REPORT = "report.md"
DPI = 120
# Below this many images the percentile bootstrap undercovers noticeably (it cannot see the tails), so the
# report flags its verdicts as provisional (ours; tests/test_stats.py measures ~92% coverage at 60 images).
FEW_IMAGES = 20
# A row whose error is over this fraction of the mean-pose baseline's is flagged as not learned (ours: a model
# that reads the image should beat "every keypoint at its mean position" by a wide margin).
LEARNED_FRACTION = 1 / 3
# A row whose validation error still fell by more than this share over the last fifth of training had not
# converged when its schedule ended (ours: just above the scatter between the last points of the converged
# curves on the default data, a few per cent).
STILL_FALLING = 0.1
# A row merges a left/right pair where its two predictions lie closer than MERGED_SPACING x their true distance,
# and is flagged where it merges more than MERGED_SHARE of the labelled pairs (ours: a model that tells the
# sides apart merges almost none, one that cannot puts nearly every pair at one point).
MERGED_SPACING = 0.25
MERGED_SHARE = 0.5
RESAMPLES = 2000  # each end of the interval then moves by ~1.5% of its width from one bootstrap seed to another

# figure file -> (title, caption) in report.md
FIGURES = {
    "learning_curves.png": ("Learning curves",
                            "Validation mean error (input px, log scale) against optimizer step, one line per "
                            "representation and seed; dashed: the mean-pose baseline, which looks at no image; "
                            "dotted: the fraction of it below which a row counts as learned."),
    "accuracy_vs_resolution.png": ("Accuracy against input resolution",
                                   "Mean error in input px (a pixel of a larger input is a smaller piece of the "
                                   "image), in original-image px (comparable across resolutions), and PCK@0.1 "
                                   "(fraction of keypoints within 0.1 x the box size). Error bars: std over seeds."),
    "error_cdf.png": ("Distribution of keypoint error",
                      "Cumulative fraction of labelled keypoints within a given error, every seed pooled; one panel "
                      "per input size, the x axis cut at the 99th percentile. A curve to the left and above is "
                      "better."),
    "cost_vs_accuracy.png": ("Cost against accuracy",
                             "One point per representation x input size: GFLOPs and batch-1 inference time "
                             "(backbone, head and decode, log scale) against mean error in original-image px."),
    "per_keypoint_error.png": ("Error per keypoint",
                               "Mean error of each keypoint over the validation instances where it is labelled; "
                               "error bars: std over seeds."),
    "error_budget.png": ("Error budget",
                         "Per representation and input size, the parts of its error: the floor, decoding its "
                         "ideal outputs for interior keypoints (what the representation itself imposes before "
                         "any learning); the mean error after training on the report's data; and, where runs on "
                         "real data are given (`report --real DIR`), the mean error after training on those, "
                         "whose labels carry human noise. Error bars: std over seeds."),
}


@dataclass(frozen=True)
class RunDir:
    path: Path
    label: str      # the run's name, or its path where two directories share a name
    record: dict    # results.json


@dataclass(frozen=True)
class Entry:
    """One table row: a representation at one input size, from one run directory."""
    label: str
    run: RunDir
    row: dict
    errors: np.ndarray  # (S, N, K) input-px error per seed; NaN where unlabelled
    counted: np.ndarray  # (N, K) labelled keypoints
    merged_pairs: float | None  # share of labelled left/right pairs predicted at one point (None: no pairs)

    @property
    def baseline(self) -> bool:
        """The mean-pose row: no network, so no costs, floor or learning curve."""
        return bool(self.row.get("baseline"))

    @property
    def size(self) -> tuple[int, int]:
        height, width = self.row["input"].split("x")
        return int(height), int(width)


def _load_runs(run_dirs: list[Path]) -> tuple[list[RunDir], dict[str, np.ndarray]]:
    """The run directories' records, and the evaluation set they all share (image_ids, visible)."""
    paths = list(dict.fromkeys(Path(d).resolve() for d in run_dirs))
    if not paths:
        raise HeatbenchError("report: name at least one run directory")
    records = []
    for path in paths:
        needed = ("results.json", PREDICTIONS, BASELINE_PREDICTIONS)
        if not all((path / name).is_file() for name in needed):
            raise HeatbenchError(f"{path}: not a run directory (it needs {', '.join(needed)})")
        records.append(json.loads((path / "results.json").read_text()))
    names = [record["run"] for record in records]
    runs = [RunDir(path, name if names.count(name) == 1 else str(path), record)
            for path, name, record in zip(paths, names, records)]
    evaluation = None
    for run in runs:
        with np.load(run.path / PREDICTIONS) as predictions:
            this = {"image_ids": predictions["image_ids"], "visible": predictions["visible"]}
        if evaluation is None:
            evaluation = this
        elif not all(np.array_equal(evaluation[key], this[key]) for key in this):
            raise HeatbenchError(f"{run.path} was evaluated on other instances than {runs[0].path}; "
                                 "their numbers do not compare")
    return runs, evaluation


def _entries(runs: list[RunDir], visible: np.ndarray) -> list[Entry]:
    homes: dict[tuple[str, str], set[str]] = {}
    for run in runs:
        for row in run.record["rows"]:
            homes.setdefault((row["representation"], row["input"]), set()).add(run.label)
    ambiguous = {name for (name, _), labels in homes.items() if len(labels) > 1}
    entries, baselines = [], set()
    for run in runs:
        pairs = flip_pairs_from_names(run.record["data"]["keypoint_names"])
        for row in run.record["rows"]:
            if row.get("baseline"):  # runs on the same instances share it: one entry per input size
                if row["input"] in baselines:
                    continue
                baselines.add(row["input"])
            name = row["representation"]
            keys = ([f"{name}_{row['input']}"] if row.get("baseline") else
                    [f"{name}_{row['input']}_seed{seed}" for seed in row["seeds"]])
            file = run.path / (BASELINE_PREDICTIONS if row.get("baseline") else PREDICTIONS)
            with np.load(file) as predictions:
                missing = [key for key in keys if f"{key}/pred_input" not in predictions.files]
                if missing:
                    raise HeatbenchError(f"{file}: no predictions for {', '.join(missing)}")
                outputs = [(predictions[f"{key}/pred_input"], predictions[f"{key}/target_input"]) for key in keys]
            errors = np.stack([keypoint_errors(*output) for output in outputs])  # (S, N, K)
            merged = (float(np.mean([merged_pairs(*output, visible, pairs, MERGED_SPACING) for output in outputs]))
                      if pairs else None)
            label = f"{name} ({run.label})" if name in ambiguous and not row.get("baseline") else name
            entries.append(Entry(label, run, row, errors, (visible > 0) & np.isfinite(errors).all(axis=0), merged))
    return entries


def _by_area(size: tuple[int, int]) -> tuple:
    """Sort key for (H, W) sizes: smallest input first."""
    return size[0] * size[1], size


def _sizes(entries: list[Entry]) -> list[tuple[int, int]]:
    return sorted({entry.size for entry in entries}, key=_by_area)




def _colours(entries: list[Entry]) -> dict[str, str]:
    """One colour per label, the same in every figure."""
    return {label: f"C{index % 10}" for index, label in enumerate(dict.fromkeys(e.label for e in entries))}


def _spread(entry: Entry, key: str) -> float | None:
    return entry.row.get(f"{key}_std")


def _per_keypoint(entry: Entry) -> np.ndarray:
    """(S, K) mean error of each keypoint per seed, input px."""
    counted = entry.counted[None]
    return np.where(counted, entry.errors, 0.0).sum(axis=1) / counted.sum(axis=1)


def _panels(count: int, width: float, height: float, columns: bool = True) -> tuple[Figure, list]:
    figure = Figure(figsize=(width * count, height) if columns else (width, height * count), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, count, squeeze=False)[0] if columns else figure.subplots(count, 1, squeeze=False)[:, 0]
    return figure, list(axes)


def _plot_accuracy(entries: list[Entry], colours: dict[str, str]) -> Figure:
    sizes = _sizes(entries)
    metrics = [("mean_error_input_px", "mean error (input px)"), ("mean_error_image_px", "mean error (image px)"),
               ("pck@0.1", "PCK@0.1")]
    figure, axes = _panels(len(metrics), 4.2, 3.6)
    for axis, (key, title) in zip(axes, metrics):
        for label, colour in colours.items():
            group = sorted((e for e in entries if e.label == label), key=lambda e: sizes.index(e.size))
            spreads = [_spread(e, key) for e in group]
            axis.errorbar([sizes.index(e.size) for e in group], [e.row[key] for e in group],
                          yerr=None if None in spreads else spreads, marker="o", capsize=3, color=colour, label=label)
        axis.set(title=title, xlabel="input (HxW)", xticks=range(len(sizes)), xticklabels=map(size_name, sizes))
        axis.margins(x=0.15)
    axes[0].legend(fontsize="small")
    return figure


def _plot_cdf(entries: list[Entry], colours: dict[str, str]) -> Figure:
    sizes = _sizes(entries)
    figure, axes = _panels(len(sizes), 4.5, 3.6)
    for axis, size in zip(axes, sizes):
        shown = [e for e in entries if e.size == size]
        pooled = {e.label: np.sort(e.errors[:, e.counted].ravel()) for e in shown}  # every seed's errors
        for label, errors in pooled.items():
            axis.step(errors, np.arange(1, len(errors) + 1) / len(errors), where="post", color=colours[label],
                      label=label)
        # a few wild misses would squeeze every curve against the axis; the 99th percentile keeps them readable
        axis.set_xlim(0, max(np.percentile(errors, 99) for errors in pooled.values()))
        axis.set(title=f"input {size_name(size)}", xlabel="keypoint error (input px)",
                 ylabel="fraction of keypoints within", ylim=(0, 1.02))
        axis.legend(fontsize="small", loc="lower right")
    return figure


class _PlainLogFormatter(LogFormatter):
    """matplotlib's choice of which log ticks to label, each label a plain number (0.4835, 3, 1000) instead
    of 4.835 x 10^-1, with the fewest significant digits that still spell its value."""

    def format_ticks(self, values):
        labels = super().format_ticks(values)
        shown = [value for value, label in zip(values, labels) if label]
        for digits in range(1, 8):
            plain = [np.format_float_positional(value, precision=digits, fractional=False, trim="-")
                     for value in shown]
            if all(math.isclose(float(text), value, rel_tol=1e-6) for text, value in zip(plain, shown)):
                break
        texts = iter(plain)
        return [next(texts) if label else "" for label in labels]


def _log_y(axis) -> None:
    axis.set_yscale("log")
    axis.yaxis.set_major_formatter(_PlainLogFormatter())
    axis.yaxis.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False))


def _plot_cost(entries: list[Entry], colours: dict[str, str]) -> Figure:
    figure, axes = _panels(2, 5.0, 4.0)
    several_sizes = len(_sizes(entries)) > 1
    for axis, (key, title) in zip(axes, [("inference_gflops", "GFLOPs per image"),
                                         ("inference_ms", "inference ms per image (batch 1)")]):
        labelled = set()
        for entry in (e for e in entries if not e.baseline):
            x, y = entry.row["mean_error_image_px"], entry.row[key]
            axis.errorbar(x, y, xerr=_spread(entry, "mean_error_image_px"), yerr=_spread(entry, key), marker="o",
                          capsize=3, color=colours[entry.label],
                          label=None if entry.label in labelled else entry.label)
            labelled.add(entry.label)
            if several_sizes:
                axis.annotate(entry.row["input"], (x, y), textcoords="offset points", xytext=(4, 4),
                              fontsize="x-small")
        # costs span orders of magnitude (a 1x1-conv head beside NerPE's dense MLP decoding)
        _log_y(axis)
        axis.set(xlabel="mean error (image px; lower is better)", ylabel=title)
        axis.legend(fontsize="x-small")
    return figure


def _plot_per_keypoint(entries: list[Entry], colours: dict[str, str], keypoint_names: list[str]) -> Figure:
    sizes = _sizes(entries)
    figure, axes = _panels(len(sizes), max(6.0, 0.45 * len(keypoint_names) + 2), 3.4, columns=False)
    positions = np.arange(len(keypoint_names))
    for axis, size in zip(axes, sizes):
        shown = [e for e in entries if e.size == size]
        width = 0.8 / len(shown)
        for index, entry in enumerate(shown):
            per_seed = _per_keypoint(entry)  # (S, K)
            axis.bar(positions + (index - (len(shown) - 1) / 2) * width, per_seed.mean(axis=0), width,
                     yerr=per_seed.std(axis=0, ddof=1) if len(per_seed) > 1 else None, capsize=2,
                     color=colours[entry.label], label=entry.label)
        axis.set_xticks(positions, keypoint_names, rotation=60, ha="right", fontsize="small")
        axis.set(title=f"input {size_name(size)}", ylabel="mean error (input px)")
        axis.legend(fontsize="small")
    return figure


def _real_errors(real: list[Entry]) -> dict[tuple[str, str], Entry]:
    """The rows trained on real data, by (representation, input), for the error budget."""
    by_key: dict[tuple[str, str], Entry] = {}
    for entry in (e for e in real if not e.baseline):
        key = entry.row["representation"], entry.row["input"]
        if key in by_key:
            raise HeatbenchError(f"report --real: {key[0]} at {key[1]} is in more than one run directory")
        by_key[key] = entry
    return by_key


def _data_label(record: dict) -> str:
    """A data set's name for a legend, which must stay narrower than its axes: a spec's kind without its
    options (``synthetic`` for ``synthetic:train=4800,...``; the provenance table spells them out)."""
    return record["data"]["name"].split(":", 1)[0]


def _plot_error_budget(entries: list[Entry], colours: dict[str, str], real: list[Entry]) -> Figure:
    sizes = _sizes(entries)
    real_by_key = _real_errors(real)
    data_name = _data_label(entries[0].run.record)
    real_names = ", ".join(dict.fromkeys(_data_label(e.run.record) for e in real_by_key.values()))
    parts = 3 if real_by_key else 2
    width = 0.8 / parts
    figure, axes = _panels(len(sizes), max(4.5, 0.4 * parts * max(sum(e.size == s for e in entries) for s in sizes)),
                           3.6)
    for axis, size in zip(axes, sizes):
        shown = [e for e in entries if e.size == size and not e.baseline]
        positions = np.arange(len(shown)) - 0.4 + width / 2
        bars = [axis.bar(positions, [e.row["floor_px"] for e in shown], width, color="0.9", edgecolor="0.3",
                         label="floor: decode(ideal outputs)"),
                axis.bar(positions + width, [e.row["mean_error_input_px"] for e in shown], width,
                         yerr=[_spread(e, "mean_error_input_px") or 0.0 for e in shown], capsize=3,
                         color=[colours[e.label] for e in shown], label=f"trained on {data_name}")]
        if real_by_key:
            matched = [real_by_key.get((e.row["representation"], e.row["input"])) for e in shown]
            bars.append(axis.bar(positions + 2 * width,
                                 [m.row["mean_error_input_px"] if m else np.nan for m in matched], width,
                                 yerr=[(_spread(m, "mean_error_input_px") or 0.0) if m else 0.0 for m in matched],
                                 capsize=3, color=[colours[e.label] for e in shown], hatch="//", alpha=0.6,
                                 label=f"trained on {real_names}"))
        for group in bars:
            axis.bar_label(group, fmt="%.3g", fontsize="x-small")
        axis.set_xticks(np.arange(len(shown)), [e.label for e in shown], rotation=30, ha="right")
        axis.set(title=f"input {size_name(size)}", ylabel="mean error (input px)")
        axis.legend(fontsize="small")
    return figure


def _plot_curves(entries: list[Entry], colours: dict[str, str]) -> Figure:
    sizes = _sizes(entries)
    figure, axes = _panels(len(sizes), 5.0, 3.8)
    for axis, size in zip(axes, sizes):
        for entry in (e for e in entries if e.size == size):
            if entry.baseline:
                axis.axhline(entry.row["mean_error_input_px"], color="0.3", linestyle="--", label=entry.label)
                axis.axhline(entry.row["mean_error_input_px"] * LEARNED_FRACTION, color="0.6", linestyle=":",
                             label=f"{LEARNED_FRACTION:.2g} x {entry.label}")
                continue
            seeds = [row for row in entry.run.record["seed_rows"] if (row["representation"], row["input"])
                     == (entry.row["representation"], entry.row["input"]) and row.get("curve")]
            for index, row in enumerate(seeds):
                axis.plot([point["step"] for point in row["curve"]],
                          [point["mean_error_input_px"] for point in row["curve"]], marker=".",
                          color=colours[entry.label], alpha=0.8, label=entry.label if index == 0 else None)
        _log_y(axis)
        axis.set(title=f"input {size_name(size)}", xlabel="optimizer step", ylabel="validation mean error (input px)")
        axis.legend(fontsize="x-small")
    return figure


def _cell(entry: Entry, key: str, spread: bool = True) -> str:
    std = _spread(entry, key) if spread else None
    return format_cell({key: entry.row.get(key), **({f"{key}_std": std} if std is not None else {})}, key)


def _not_learned(entries: list[Entry]) -> str:
    """A warning naming every row whose error is over LEARNED_FRACTION of the mean pose's, or "", and for each
    whether its own training frames (``train_vs_mean_pose``) tell under-fitting from a failure to generalise."""
    failing = [e for e in entries
               if not e.baseline and e.row.get("vs_mean_pose") is not None and e.row["vs_mean_pose"] > LEARNED_FRACTION]
    if not failing:
        return ""

    def diagnosis(entry: Entry) -> str:
        train = entry.row.get("train_vs_mean_pose")
        if train is None:
            return ""
        verdict = "fits its training frames" if train <= LEARNED_FRACTION else "does not fit its training frames"
        return f"; {verdict}, train {train:.2f}"

    named = [f"{e.label} at {e.row['input']} ({e.row['vs_mean_pose']:.2f}{diagnosis(e)})" for e in failing]
    return (f"**Warning: {len(failing)} row(s) did not reach {LEARNED_FRACTION:.2g} of the mean-pose error**, the bar "
            "for a model that learned from the image: " + ", ".join(named) + ". A row that fits its training "
            "frames and misses the bar on validation fails to generalise from them; one that fits neither is "
            "under-trained. Either way its accuracy is not yet a measure of the representation: find the cause "
            "before comparing it.\n\n")


def _still_falling(entries: list[Entry]) -> str:
    """A warning naming every row whose validation error fell by more than STILL_FALLING over the last fifth
    of training (``last_fifth_change``), or ""."""
    falling = [e for e in entries if (e.row.get("last_fifth_change") or 0) < -STILL_FALLING]
    if not falling:
        return ""
    named = [f"{e.label} at {e.row['input']} ({e.row['last_fifth_change']:+.0%})" for e in falling]
    return (f"**Warning: {len(falling)} row(s) were still learning when training ended**: their validation error "
            f"fell by more than {STILL_FALLING:.0%} over the last fifth of the schedule: " + ", ".join(named)
            + ". Their numbers are the schedule's, not yet the representation's: train them longer.\n\n")


def _merged_sides(entries: list[Entry]) -> str:
    """A warning naming every row that puts more than MERGED_SHARE of the labelled left/right pairs at one
    point, or ""."""
    merging = [e for e in entries if not e.baseline and (e.merged_pairs or 0) > MERGED_SHARE]
    if not merging:
        return ""
    named = [f"{e.label} at {e.row['input']} ({e.merged_pairs:.0%})" for e in merging]
    return (f"**Warning: {len(merging)} row(s) put left and right at one point**: in more than {MERGED_SHARE:.0%} of "
            f"the labelled left/right pairs their two predictions lie closer than {MERGED_SPACING:g} x the pair's "
            "true distance: " + ", ".join(named) + ". Either the images do not tell the sides apart (a figure seen "
            "from behind that looks like its mirrored front view) or the model has not learned to; the paired "
            "keypoints' errors are then not a measure of localisation.\n\n")


def _results_table(entries: list[Entry]) -> str:
    rows = [{"representation": e.label, "input (HxW)": e.row["input"], "seeds": len(e.row["seeds"]),
             "mean err (input px)": _cell(e, "mean_error_input_px"), "vs mean pose": _cell(e, "vs_mean_pose"),
             "val change, last fifth": _cell(e, "last_fifth_change"), "PCK@0.1": _cell(e, "pck@0.1"),
             "AP": _cell(e, "AP"), "floor (input px)": _cell(e, "floor_px", spread=False),
             "GFLOPs/img": _cell(e, "inference_gflops", spread=False), "infer ms/img": _cell(e, "inference_ms")}
            for e in sorted(entries, key=lambda e: _by_area(e.size))]
    return tabulate(rows, headers="keys", tablefmt="github", disable_numparse=True)


def _comparable(a: Entry, b: Entry) -> bool:
    if a.size != b.size or a.baseline and b.baseline:
        return False
    if a.baseline or b.baseline:  # the mean pose depends on no seed, schedule or flip test
        return True
    return (a.row["seeds"] == b.row["seeds"] and a.run.record["train"] == b.run.record["train"]
            and a.run.record["data"]["flip_test"] == b.run.record["data"]["flip_test"])


def _comparisons(entries: list[Entry], image_ids: np.ndarray, visible: np.ndarray) -> str:
    rows, few_images = [], len(np.unique(image_ids)) < FEW_IMAGES
    for a, b in itertools.combinations(sorted(entries, key=lambda e: _by_area(e.size)), 2):
        if not _comparable(a, b):
            continue
        result = paired_bootstrap(a.errors.mean(axis=0), b.errors.mean(axis=0), visible, image_ids, RESAMPLES)
        if result["significant"]:
            verdict = f"**{a.label} beats {b.label}**" if result["ci_high"] < 0 else f"**{b.label} beats {a.label}**"
        else:
            verdict = "no significant difference"
        rows.append({"input (HxW)": a.row["input"], "A": a.label, "B": b.label,
                     "A − B (input px)": f"{result['mean_diff']:+.3g}",
                     f"{CONFIDENCE:.0%} CI": f"[{result['ci_low']:+.3g}, {result['ci_high']:+.3g}]",
                     "images / keypoints": f"{result['n_images']} / {result['n_keypoints']}", "verdict": verdict})
    intro = (f"Difference in mean keypoint error, A − B (negative: A is more accurate), with a {CONFIDENCE:.0%} "
             f"percentile bootstrap interval that resamples images ({RESAMPLES} resamples). A representation "
             "trained with several seeds enters with its seed-mean error per keypoint, so the interval measures the "
             "spread over evaluated images, not over retraining. \"A beats B\" is stated only where the interval "
             "excludes zero. Rows are compared when they share the input size, the seeds, the schedule and the "
             "flip test; every row is compared with the mean pose at its input size.\n\n")
    if not rows:
        return intro + "No two rows share an input size, seeds, schedule and flip test; nothing to compare.\n"
    caution = (f"\nFewer than {FEW_IMAGES} validation images: a bootstrap over so few images gives intervals "
               "that are too narrow, so read these verdicts as provisional.\n" if few_images else "")
    return intro + tabulate(rows, headers="keys", tablefmt="github", disable_numparse=True) + "\n" + caution


def _provenance(runs: list[RunDir]) -> str:
    rows = []
    for run in runs:
        data, train = run.record["data"], run.record["train"]
        rows.append({
            "run": run.label,
            "data": data["name"],
            "train / val instances": f"{data['train_instances']} / {data['val_instances']}",
            "split": data.get("split") or f"{data['val_fraction']:.0%} val, seed {data['split_seed']}",
            "backbone": f"ResNet-{train['backbone_depth']}, "
                        + (f"initialised from {train['pretrained']}" if train["pretrained"] else "from scratch"),
            "schedule": f"epochs {train['epochs']}{_steps(run.record)}, batch {train['batch_size']}, Adam lr "
                        f"{train['lr']:g}, {run.record.get('training_dtype', 'float32')} training forward",
            "seeds": ", ".join(map(str, run.record["seeds"])),
            "flip test": "yes" if data["flip_test"] else "no",
            "device": run.record["device"],
            "commit": f"`{run.record['git_commit']}`",
        })
    commands = "\n".join(f"- {run.label}: {made_by(run.record)}" for run in runs)
    return tabulate(rows, headers="keys", tablefmt="github", disable_numparse=True) + f"\n\n{commands}\n"


def _steps(record: dict) -> str:
    """" (N optimizer steps)" from the record's rows, or "" where they do not say."""
    steps = {row["train_steps"] for row in record.get("seed_rows", []) if "train_steps" in row}
    return f" ({', '.join(map(str, sorted(steps)))} optimizer steps)" if steps else ""


_NUMBER = re.compile(r"(\d+)")


def _groups_varying_in_one_number(texts: list[str]) -> list[tuple[list[str], int | None, list[int]]]:
    """Consecutive texts equal but for one number at the same place, as (pieces, index, numbers).

    ``pieces`` is the first text split around its numbers (numbers at odd indices), ``index`` the piece that
    varies (None for a group of one) and ``numbers`` its value in each text, in order.
    """
    groups: list[tuple[list[str], int | None, list[int]]] = []
    for text in texts:
        pieces = _NUMBER.split(text)
        if groups and len(groups[-1][0]) == len(pieces):
            first, index, numbers = groups[-1]
            differing = [i for i, (a, b) in enumerate(zip(first, pieces)) if a != b]
            if (len(differing) == 1 and differing[0] % 2 and index in (None, differing[0])
                    and str(int(pieces[differing[0]])) == pieces[differing[0]]):
                if index is None:
                    numbers = [int(first[differing[0]])]
                groups[-1] = (first, differing[0], numbers + [int(pieces[differing[0]])])
                continue
        groups.append((pieces, None, []))
    return groups


def _brace(numbers: list[int]) -> str:
    """Bash brace expansion of ``numbers``: {0..20} for an ascending run, else {3,1,7}."""
    if len(numbers) > 2 and numbers == list(range(numbers[0], numbers[-1] + 1)):
        return f"{{{numbers[0]}..{numbers[-1]}}}"
    return "{" + ",".join(map(str, numbers)) + "}"


def _spans(numbers: list[int]) -> str:
    """1-20, or 0, 2, 5-7: the numbers as ascending spans."""
    spans = []
    for _, run in itertools.groupby(enumerate(sorted(numbers)), key=lambda pair: pair[1] - pair[0]):
        values = [value for _, value in run]
        spans.append(str(values[0]) if len(values) == 1 else f"{values[0]}-{values[-1]}")
    return ", ".join(spans)


def _with(pieces: list[str], index: int | None, text: str) -> str:
    return "".join(pieces) if index is None else "".join(pieces[:index] + [text] + pieces[index + 1:])


def made_by(record: dict) -> str:
    """The command (or, for a merged run, the commands) that made a run, with the commit and device of each.

    A merge's arguments that differ in one number are written as a bash brace expansion, and its sources
    that differ only in one number of their command (the shards of one sweep) as one command with N for it.
    """
    def where(source: dict) -> str:
        return f"at commit {source['git_commit']} on {source['device']}"
    if "sources" not in record:
        return f"Made by `{record['command']}` {where(record)}."
    arguments = " ".join(_with(pieces, index, _brace(numbers))
                         for pieces, index, numbers in _groups_varying_in_one_number(record["command"].split(" ")))
    made = []
    for _, same_place in itertools.groupby(record["sources"], key=where):
        same_place = list(same_place)
        for pieces, index, numbers in _groups_varying_in_one_number([s["command"] for s in same_place]):
            made.append(f"`{_with(pieces, index, 'N')}`" + (f" for N = {_spans(numbers)}" if numbers else ""))
        made[-1] += f" {where(same_place[0])}"
    return f"Merged by `{arguments}` from {len(record['sources'])} runs: " + "; ".join(made) + "."


@contextlib.contextmanager
def _publishing(out_dir: Path) -> Iterator[Path]:
    """Yield a staging directory whose files appear in ``out_dir`` only once every one is written."""
    if not out_dir.exists():
        with atomic_directory(out_dir) as staging:
            yield staging
        return
    staging = Path(tempfile.mkdtemp(prefix=".report.", dir=out_dir))
    try:
        yield staging
        for path in sorted(staging.iterdir(), key=lambda p: p.name == REPORT):
            os.replace(path, out_dir / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_report(run_dirs: list[Path], out_dir: Path, real_dirs: list[Path] = ()) -> Path:
    """Write ``out_dir/report.md`` and its figures for the runs in ``run_dirs``; returns the report's path.

    ``real_dirs``, runs on other (real) data, join only the error budget, as each row's error on real labels.
    """
    runs, evaluation = _load_runs(run_dirs)
    entries = _entries(runs, evaluation["visible"])
    if not entries:
        raise HeatbenchError(f"report: {', '.join(str(run.path) for run in runs)} hold no result rows")
    real = []
    if real_dirs:
        real_runs, real_evaluation = _load_runs(real_dirs)
        real = _entries(real_runs, real_evaluation["visible"])
    colours = _colours(entries)
    figures = {
        "learning_curves.png": _plot_curves(entries, colours),
        "accuracy_vs_resolution.png": _plot_accuracy(entries, colours),
        "error_cdf.png": _plot_cdf(entries, colours),
        "cost_vs_accuracy.png": _plot_cost(entries, colours),
        "per_keypoint_error.png": _plot_per_keypoint(entries, colours, runs[0].record["data"]["keypoint_names"]),
        "error_budget.png": _plot_error_budget(entries, colours, real),
    }
    sections = "".join(f"### {FIGURES[name][0]}\n\n![{FIGURES[name][0]}]({name})\n\n{FIGURES[name][1]}\n\n"
                       for name in figures)
    markdown = (
        f"# heatbench report: {', '.join(run.label for run in runs)}\n\n"
        "## Where these numbers come from\n\n" + _provenance(runs) + "\n"
        "## Results\n\n"
        "Errors are Euclidean distances over the labelled keypoints of the validation split, in pixels of the "
        "network input; PCK@0.1 counts keypoints within 0.1 x the instance's box size; AP is OKS AP "
        f"({runs[0].record['data']['oks_sigmas']}); floor is the error of decode(ideal outputs) for interior "
        "keypoints; GFLOPs and ms are per image at batch 1 on the run's device. Mean ± sample std over seeds.\n\n"
        + _not_learned(entries) + _still_falling(entries) + _merged_sides(entries) + _results_table(entries) + "\n\n"
        "## Figures\n\n" + sections
        + "## Paired comparisons\n\n" + _comparisons(entries, evaluation["image_ids"], evaluation["visible"])
    )
    with _publishing(Path(out_dir)) as staging:
        for name, figure in figures.items():
            figure.savefig(staging / name, dpi=DPI)
        (staging / REPORT).write_text(markdown)
    return Path(out_dir) / REPORT
