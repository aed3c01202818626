"""Train / validation splits: drawn from one data set, given as a second file, or re-used from a stored run;
a rendered set's are its fixed scene ranges.

Every split is recorded by its image file names, as the annotation files name them (relative to each data
set's image root), so that a later study can re-use it on another machine or checkout (``--split FILE``
takes a run's ``results.json`` or any JSON with ``train_images`` and ``val_images``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import KeypointDataset, is_synthetic, load_dataset, load_synthetic, parse_synthetic
from .data.dataset import check_keypoint_names, read_json
from .errors import DataError, HeatbenchError

log = logging.getLogger(__name__)

VAL_FRACTION = 0.2
SPLIT_SEED = 0


@dataclass(frozen=True)
class SplitSpec:
    """How to split: ``val_data`` (a second annotation file, no split drawn), ``split_file`` (a stored split),
    or ``val_fraction`` and ``seed`` of a random split by image (None: VAL_FRACTION, SPLIT_SEED)."""

    val_data: str | None = None
    val_image_root: str | None = None
    val_fraction: float | None = None
    seed: int | None = None
    split_file: Path | None = None

    def __post_init__(self):
        drawn = self.val_fraction is not None or self.seed is not None
        if self.val_data is not None and (drawn or self.split_file is not None):
            raise HeatbenchError("--val-data gives the validation set: it cannot be combined with --val-fraction, "
                                 "--split-seed or --split")
        if self.split_file is not None and drawn:
            raise HeatbenchError("--split gives the split: it cannot be combined with --val-fraction or --split-seed")
        if self.val_image_root is not None and self.val_data is None:
            raise HeatbenchError("--val-image-root needs --val-data")
        if self.val_fraction is not None and not 0 < self.val_fraction < 1:
            raise HeatbenchError(f"--val-fraction {self.val_fraction:g}: must be between 0 and 1")


@dataclass
class Split:
    """The two sides, how they were made (one line for the report) and the record results.json keeps."""

    train: KeypointDataset
    val: KeypointDataset
    description: str
    record: dict

    def summary(self) -> str:
        """One line: how the split was made, and the images and instances on each side."""
        sides = [f"{name} {len(np.unique(part.image_ids))} images / {len(part)} instances"
                 for name, part in (("train", self.train), ("val", self.val))]
        return f"split:      {self.description}: {', '.join(sides)}"


def _record(method: str, train: KeypointDataset, val: KeypointDataset, **settings) -> dict:
    return {"method": method, **settings, "train_images": sorted(set(train.image_names())),
            "val_images": sorted(set(val.image_names()))}


def _stored_split(path: Path) -> tuple[list[str], list[str]]:
    """(train, val) image names of a stored split: a results.json's ``split`` or a bare split object."""
    stored = read_json(path)
    split = stored.get("split", stored) if isinstance(stored, dict) else None
    if not (isinstance(split, dict) and all(isinstance(split.get(key), list) for key in ("train_images",
                                                                                          "val_images"))):
        raise DataError(f"{path}: not a stored split (expected a results.json with 'split', or an object with "
                        "lists 'train_images' and 'val_images')")
    return [str(name) for name in split["train_images"]], [str(name) for name in split["val_images"]]


def _from_file(dataset: KeypointDataset, path: Path) -> Split:
    train_names, val_names = _stored_split(path)
    names = np.asarray(dataset.image_names())
    missing = sorted(set(train_names + val_names) - set(names))
    if missing:
        raise DataError(f"--split {path}: {len(missing)} image(s) of the stored split are not in {dataset.source} "
                        f"(e.g. {missing[0]!r})")
    in_train, in_val = np.isin(names, train_names), np.isin(names, val_names)
    if (in_train & in_val).any():
        raise DataError(f"--split {path}: image {names[in_train & in_val][0]!r} is on both sides")
    left_out = int((~(in_train | in_val)).sum())
    if left_out:
        log.info("--split %s: %d instance(s) of images the split does not name are left out", path, left_out)
    train, val = dataset.subset(np.flatnonzero(in_train)), dataset.subset(np.flatnonzero(in_val))
    return Split(train, val, f"stored in {path.name}", _record("file", train, val, file=str(path)))


def make_split(dataset: KeypointDataset, spec: SplitSpec = SplitSpec()) -> Split:
    """The train / validation split ``spec`` asks for (see :class:`SplitSpec`)."""
    if spec.val_data is not None:
        val = load_dataset(spec.val_data, spec.val_image_root)
        check_keypoint_names(val, dataset.keypoint_names, dataset.source, "--val-data")
        return Split(dataset, val, f"validation data {Path(spec.val_data).name}",
                     _record("val_data", dataset, val, val_source=str(val.source)))
    if spec.split_file is not None:
        return _from_file(dataset, Path(spec.split_file))
    fraction = VAL_FRACTION if spec.val_fraction is None else spec.val_fraction
    seed = SPLIT_SEED if spec.seed is None else spec.seed
    train, val = dataset.split(fraction, seed=seed)
    return Split(train, val, f"{fraction:.0%} val, seed {seed}",
                 _record("random", train, val, val_fraction=fraction, seed=seed))


def load_split(data: str | Path, image_root: str | Path | None = None, spec: SplitSpec = SplitSpec()) -> Split:
    """The train / validation split of ``data``: a rendered set's own train and validation scenes (recorded
    by its spec, not by 10^4 image names), or ``make_split`` of the loaded file."""
    if not is_synthetic(data):
        return make_split(load_dataset(data, image_root), spec)
    if image_root is not None:
        raise HeatbenchError("--image-root cannot be used with a rendered data set (it has no image files)")
    if spec != SplitSpec():
        raise HeatbenchError("a rendered set's split is fixed by scene index: it takes no --val-data, "
                             "--val-fraction, --split-seed or --split")
    config = parse_synthetic(str(data))
    train, val = load_synthetic(config, "train"), load_synthetic(config, "val")
    return Split(train, val, f"rendered scenes, seed {config.seed}",
                 {"method": "synthetic", "spec": config.spec, "train_scenes": len(train), "val_scenes": len(val)})
