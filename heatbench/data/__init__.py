"""Keypoint data: loaders for DeepLabCut tables and projects, COCO-style and MPII JSON, the embedded default
set, and the top-down pipeline that turns an instance into a network input.

``load_dataset("default")`` is the embedded mirror-mouse set (90 frames from lightning-pose, MIT licence;
see ``mirror_mouse/README.md``); a ``.csv`` or ``.h5`` is read as a DeepLabCut label table, a ``.yaml`` as a
DeepLabCut project's config, a ``.json`` as MPII when it is a list of records with ``joints`` and as
COCO-style keypoints otherwise. A rendered set, ``synthetic[:FIELD=VALUE,...]``, has fixed train, validation
and test scenes: ``load_synthetic`` (:mod:`heatbench.data.synthetic`).
"""
from __future__ import annotations

from pathlib import Path

from ..errors import DataError, HeatbenchError
from .coco import load_coco_json, parse_coco
from .dataset import KeypointDataset, read_json
from .dlc import load_dlc_csv, load_dlc_project, load_dlc_table
from .mpii import is_mpii_records, load_mpii_json, parse_mpii
from .synthetic import SyntheticConfig, is_synthetic, load_synthetic, parse_synthetic
from .topdown import (AugmentConfig, Sample, TopDownDataset, apply_affine, crop_affine, crop_box, invert_affine,
                      warp_image)

DEFAULT_DATA = Path(__file__).parent / "mirror_mouse" / "CollectedData.csv"

__all__ = ["AugmentConfig", "KeypointDataset", "Sample", "SyntheticConfig", "TopDownDataset", "apply_affine",
           "crop_affine", "crop_box", "invert_affine", "is_synthetic", "load_coco_json", "load_dataset",
           "load_default", "load_dlc_csv", "load_dlc_project", "load_dlc_table", "load_mpii_json", "load_synthetic",
           "parse_synthetic", "warp_image"]


def load_default() -> KeypointDataset:
    """The embedded mirror-mouse set: 90 grey frames, 17 keypoints, one mouse per frame, named "mirror_mouse"."""
    return load_dlc_csv(DEFAULT_DATA)


def load_dataset(spec: str | Path, image_root: str | Path | None = None) -> KeypointDataset:
    """The data set named by ``spec``: "default", a DeepLabCut ``.csv`` / ``.h5`` table or project
    ``config.yaml``, or an MPII / COCO-style ``.json``.

    ``image_root`` is the folder image paths in the file start from (default: the loader's, e.g. the file's
    folder); a project's images always start from its folder.
    """
    if str(spec) == "default":
        if image_root is not None:
            raise HeatbenchError("--image-root cannot be used with the default data set (its images are embedded)")
        return load_default()
    path = Path(spec)
    suffix = path.suffix.lower()
    if suffix in (".csv", ".h5"):
        return load_dlc_table(path, image_root)
    if suffix in (".yaml", ".yml"):
        if image_root is not None:
            raise HeatbenchError(f"--image-root cannot be used with {path} (a project's images are in its folder)")
        return load_dlc_project(path)
    if suffix == ".json":
        data = read_json(path)
        return parse_mpii(data, path, image_root) if is_mpii_records(data) else parse_coco(data, path, image_root)
    if is_synthetic(spec):
        raise DataError(f"{spec}: a rendered set has fixed train / validation / test scenes; use it with `run`, "
                        "`evaluate` (its test scenes) or `data` (in Python: load_synthetic)")
    raise DataError(f"{path}: unknown data format; expected 'default', a DeepLabCut .csv, .h5 or "
                    "config.yaml, or a COCO or MPII .json")
