"""Prediction files in the formats people load: a COCO keypoint results JSON for every scored model, and for
DeepLabCut data a predictions CSV as DeepLabCut's own analysis writes it.

The COCO file holds one result per instance (see :func:`heatbench.metrics.coco_results`); for COCO-style data
its image and category ids are the annotation file's, so pycocotools' COCOeval scores it against that file.
The DeepLabCut CSV has the header rows scorer, [individuals,] bodyparts, coords (x, y, likelihood, the
representation's keypoint score) and one row per image, keyed by the image path as the label table names it;
coordinates are 0-based pixel centres, as in the label tables.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from .coords import canonical_to_pixel_centre
from .data import KeypointDataset
from .metrics import coco_results

FOLDER = "predictions"
SCORER = "heatbench"


def dlc_predictions(dataset: KeypointDataset, keypoints: np.ndarray, scores: np.ndarray,
                    scorer: str = SCORER) -> pd.DataFrame:
    """The DeepLabCut predictions table of (N, K, 2) image-coordinate predictions and (N, K) scores: one row
    per image, per individual the x, y and likelihood of every body part (multi-animal data), else per
    body part; an individual not predicted in an image is NaN there."""
    values = np.concatenate([canonical_to_pixel_centre(keypoints), scores[..., None]], axis=-1)  # (N, K, 3)
    owners = dataset.individuals
    cells: dict[str, dict[tuple, float]] = {}
    for image, owner, instance in zip(dataset.image_names(), owners or [None] * len(dataset), values):
        row = cells.setdefault(image, {})
        for name, (x, y, likelihood) in zip(dataset.keypoint_names, instance):
            prefix = (scorer,) if owners is None else (scorer, owner)
            row.update({(*prefix, name, "x"): x, (*prefix, name, "y"): y, (*prefix, name, "likelihood"): likelihood})
    levels = ["scorer", "bodyparts", "coords"] if owners is None else ["scorer", "individuals", "bodyparts", "coords"]
    prefixes = [(scorer,)] if owners is None else [(scorer, owner) for owner in dict.fromkeys(owners)]
    columns = pd.MultiIndex.from_tuples([(*prefix, name, axis) for prefix in prefixes
                                         for name in dataset.keypoint_names for axis in ("x", "y", "likelihood")],
                                        names=levels)
    return pd.DataFrame.from_dict(cells, orient="index").reindex(columns=columns)


def prediction_files(dataset: KeypointDataset, predictions: dict[str, np.ndarray], label: str) -> dict[str, str]:
    """``predictions/<label>.coco.json`` and, for DeepLabCut data, ``predictions/<label>.csv``: relative path
    -> text, for the arrays ``predict`` returns on ``dataset``."""
    keypoints, scores = predictions["pred_image"], predictions["scores"]
    files = {f"{FOLDER}/{label}.coco.json": json.dumps(coco_results(dataset, keypoints, scores))}
    if dataset.file_format == "dlc":
        files[f"{FOLDER}/{label}.csv"] = dlc_predictions(dataset, keypoints, scores).to_csv()
    return files
