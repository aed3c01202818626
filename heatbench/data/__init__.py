"""Keypoint data: loaders for DeepLabCut CSV, COCO-style and MPII JSON, the embedded default set, and the
top-down pipeline that turns an instance into a network input.

``load_dataset("default")`` is the embedded mirror-mouse set (90 frames from lightning-pose, MIT licence;
see ``mirror_mouse/README.md``); a ``.csv`` is read as a DeepLabCut label table, a ``.json`` as MPII when it
is a list of records with ``joints`` and as COCO-style keypoints otherwise. ``load_splits`` gives the
(train, validation) pair a run uses: for ``synthetic[:FIELD=VALUE,...]`` the rendered set's own disjoint
scene ranges (:mod:`heatbench.data.synthetic`), for files a split by image.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import DataError, HeatbenchError
from .coco import load_coco_json, parse_coco
from .dataset import KeypointDataset, read_json
from .dlc import load_dlc_csv
from .mpii import is_mpii_records, load_mpii_json, parse_mpii
from .synthetic import SyntheticConfig, is_synthetic, load_synthetic, parse_synthetic
from .topdown import (AugmentConfig, Sample, TopDownDataset, apply_affine, crop_affine, crop_box, invert_affine,
                      warp_image)

DEFAULT_DATA = Path(__file__).parent / "mirror_mouse" / "CollectedData.csv"

__all__ = ["AugmentConfig", "KeypointDataset", "Sample", "SyntheticConfig", "TopDownDataset", "apply_affine",
           "crop_affine", "crop_box", "invert_affine", "load_coco_json", "load_dataset", "load_default",
           "load_dlc_csv", "load_mpii_json", "load_splits", "load_synthetic", "parse_synthetic", "warp_image"]


def load_default() -> KeypointDataset:
    """The embedded mirror-mouse set: 90 grey frames, 17 keypoints, one mouse per frame, named "mirror_mouse"."""
    return load_dlc_csv(DEFAULT_DATA)


def load_dataset(spec: str | Path, image_root: str | Path | None = None) -> KeypointDataset:
    """The data set named by ``spec``: "default", a DeepLabCut ``.csv``, or an MPII / COCO-style ``.json``.

    ``image_root`` is the folder image paths in the file start from (default: the file's folder).
    """
    if str(spec) == "default":
        if image_root is not None:
            raise HeatbenchError("--image-root cannot be used with the default data set (its images are embedded)")
        return load_default()
    path = Path(spec)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return load_dlc_csv(path, image_root)
    if suffix == ".json":
        data = read_json(path)
        return parse_mpii(data, path, image_root) if is_mpii_records(data) else parse_coco(data, path, image_root)
    raise DataError(f"{path}: unknown data format; expected 'default', a DeepLabCut .csv, or a COCO or MPII .json")


def load_splits(spec: str | Path, image_root: str | Path | None = None, val_fraction: float = 0.2,
                seed: int = 0) -> tuple[KeypointDataset, KeypointDataset]:
    """(train, validation) for ``spec``: a rendered set's train and val scenes (``synthetic[:FIELD=VALUE,...]``,
    whose split is fixed by scene index, so ``val_fraction`` and ``seed`` do not apply), or
    ``load_dataset(spec, image_root).split(val_fraction, seed)``."""
    if is_synthetic(spec):
        if image_root is not None:
            raise HeatbenchError("--image-root cannot be used with a rendered data set (it has no image files)")
        config = parse_synthetic(str(spec))
        return load_synthetic(config, "train"), load_synthetic(config, "val")
    return load_dataset(spec, image_root).split(val_fraction, seed)
