"""``heatbench evaluate``: score a trained checkpoint on any data set, with the code and columns of ``run``'s table.

The checkpoint carries what rebuilds and scores its model (representation, resolved config, input size,
keypoint names and the training settings, whose batch size the evaluation reuses), so a run's checkpoint
scored on that run's validation data gives the run's numbers back. The data set must name the same
keypoints in the same order. The checkpoint also carries its training set's mean pose, so the table starts
with that baseline scored on these data and the row's ``vs_mean_pose``; ``train_vs_mean_pose`` stays blank
(there are no training frames here). A rendered set (``synthetic:...``) is scored on its test scenes, which
``run`` never sees. The output directory appears only once it is complete, like a run's.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pandas as pd

from . import floor, results
from .data import is_synthetic, load_dataset, load_synthetic, parse_synthetic
from .data.dataset import KeypointDataset, check_keypoint_names
from .errors import DataError, HeatbenchError
from .report import made_by
from .representation import build_representation
from .exports import prediction_files
from .runner import (per_keypoint_rows, representation_columns, table_columns, with_baselines, without_per_keypoint,
                     write_files)
from .train import (MEAN_POSE, MEAN_POSE_KEY, TrainConfig, build_model, evaluation_row, load_checkpoint,
                    mean_pose_scores, predict, resolve_device, score_predictions)


def _scored_data(data: str, image_root: str | None) -> KeypointDataset:
    """What ``evaluate`` scores: every instance of a file, or a rendered set's test scenes."""
    if not is_synthetic(data):
        return load_dataset(data, image_root)
    if image_root is not None:
        raise HeatbenchError(f"--image-root cannot be used with the rendered set {data}")
    config = parse_synthetic(data)
    if config.test == 0:
        raise DataError(f"{data}: evaluate scores the rendered set's test scenes, and test=0 names none")
    return load_synthetic(config, "test")


def evaluate(checkpoint: Path, data: str, image_root: str | None = None, flip_test: bool = True,
             out: Path | None = None, device: str = "auto", progress: bool = True) -> Path:
    """Score ``checkpoint`` on every instance of ``data``; write table.md, table.csv, per_keypoint.csv,
    results.json, predictions.npz, baselines.npz and the prediction files (``heatbench.exports``) to ``out``
    (default ``results/<checkpoint>_on_<data set>``) and return it."""
    checkpoint = Path(checkpoint)
    state = load_checkpoint(checkpoint)
    meta = state["meta"]
    if "keypoint_names" not in meta:
        raise HeatbenchError(f"{checkpoint}: written before checkpoints carried keypoint names; evaluate needs "
                             "them (train it again with this version)")
    dataset = _scored_data(data, image_root)
    check_keypoint_names(dataset, meta["keypoint_names"], checkpoint, "--data")
    representation = build_representation(meta["representation"], tuple(meta["input_size"]), meta["num_keypoints"],
                                          **meta["config"])
    config = dataclasses.replace(TrainConfig(**meta["train"]), flip_test=flip_test)
    target = Path(out) if out is not None else Path("results") / re.sub(r"[^\w.-]+", "-",
                                                                         f"{checkpoint.stem}_on_{dataset.name}")
    device = resolve_device(device)

    model = build_model(representation, config)
    model.load_state_dict(state["model"])
    predictions = predict(representation, model, dataset, config, device, progress)
    curve = state.get("curve") or [{}]
    row = {**representation_columns(representation.name, representation, floor.floor_error(representation)),
           "train_steps": curve[-1].get("step"), "train_seconds": state.get("train_seconds"),
           **evaluation_row(representation, model, predictions, score_predictions(dataset, predictions),
                            dataset.visible, device)}
    del row["predictions"]
    baselines, baseline_arrays = [], {}
    if MEAN_POSE_KEY in meta:  # the training set's mean pose, scored on these data: the bar the row must beat
        baseline = mean_pose_scores(np.asarray(meta[MEAN_POSE_KEY]), dataset, representation.input_size)
        baseline_arrays = {f"{MEAN_POSE}_{row['input']}/{name}": array
                           for name, array in baseline.pop("predictions").items()}
        baselines.append({"representation": MEAN_POSE, "input": row["input"], "baseline": True, **baseline})
    per_keypoint = per_keypoint_rows(baselines + [row])
    rows = without_per_keypoint(with_baselines([row], baselines))
    record = {
        "checkpoint": str(checkpoint),
        "representation": {key: meta[key] for key in ("representation", "input_size", "config", "keypoint_names")},
        "data": {"name": dataset.name, "source": str(dataset.source), "image_root": str(dataset.image_folder),
                 "instances": len(dataset), "images": len(np.unique(dataset.image_ids)),
                 "oks_sigmas": dataset.sigma_note, "flip_test": bool(flip_test and dataset.flip_pairs)},
        "train": meta["train"],
        "rows": rows,
        "per_keypoint": per_keypoint,
        **results.provenance(device),
    }
    preface = (f"# {target.name}\n\n{made_by(record)} Checkpoint {checkpoint.name} on {dataset.name}, "
               f"{len(dataset)} instances; errors over labelled keypoints; PCK relative to the box size.\n\n")
    with results.atomic_directory(target) as staging:
        results.write_json(staging / "results.json", record)
        np.savez_compressed(staging / results.PREDICTIONS, image_ids=dataset.image_ids, visible=dataset.visible,
                            target_image=dataset.keypoints, **predictions)
        np.savez_compressed(staging / results.BASELINE_PREDICTIONS, **baseline_arrays)
        print(results.write_table(staging, rows, table_columns(rows), preface=preface))
        pd.DataFrame(per_keypoint).to_csv(staging / "per_keypoint.csv", index=False)
        write_files(staging, prediction_files(dataset, predictions, checkpoint.stem))
    return target
