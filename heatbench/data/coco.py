"""COCO-style person keypoint JSON: COCO, CrowdPose, AI Challenger (as converted by MMPose) and OCHuman.

Format: an object with ``images`` (``id``, ``file_name``), ``annotations`` (``image_id``, flat
``keypoints`` ``[x1, y1, v1, ...]``, ``bbox`` ``[x, y, w, h]``, optional ``area`` and ``iscrowd``) and one
keypoint ``categories`` entry whose ``keypoints`` lists the names. ``v`` is 0 for unlabelled, 1 for labelled
but occluded and 2 for labelled and visible; both 1 and 2 count as labelled. Crowd regions (``iscrowd``) and
instances without a labelled keypoint are dropped, as in every top-down COCO pipeline.

Coordinates count pixel centres from 0 and become canonical through
:func:`heatbench.coords.pixel_centre_to_canonical`; the box corner moves with them (its size does not).
Per-set quirks: CrowdPose and AIC have no ``area`` (OKS then uses the box area, as the CrowdPose evaluator
does); AIC has no ``iscrowd`` and names its keypoints ``"Right Shoulder"``, so names are lower-cased with
spaces turned into underscores; CrowdPose's per-image ``crowdIndex`` and its JSON skeleton (copied from
COCO, meaningless for 14 points) are not used; OCHuman's file has no ``licenses``. A missing or empty box
falls back to :func:`heatbench.data.dataset.box_from_keypoints` (ours; HRNet instead drops such
instances). Boxes are not clipped to the image (ours; HRNet clips them).

Without an image root, the images are looked for where the common layouts keep them (:func:`image_folders`:
the file's folder, its parent, ``images/`` beside ``annotations/``); the folder used is logged.

Sigmas are chosen by the keypoint names: COCO's 17 (also used for OCHuman), CrowdPose's 14 or AIC's 14,
values from MMPose's dataset metadata; any other keypoint set gets 0.05 each (ours). Flip pairs come from
``left_X``/``right_X`` names.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..coords import pixel_centre_to_canonical
from ..errors import DataError
from .dataset import (DEFAULT_SIGMA, KeypointDataset, box_from_keypoints, flip_pairs_from_names, locate_images,
                      read_json, resolve_images)

log = logging.getLogger(__name__)

COCO_NAMES = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
              "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
              "right_knee", "left_ankle", "right_ankle")
CROWDPOSE_NAMES = ("left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
                   "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle", "head", "neck")
AIC_NAMES = ("right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow", "left_wrist", "right_hip",
             "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle", "head_top", "neck")

# keypoint names -> (OKS sigmas, what they are)
KNOWN_SIGMAS: dict[tuple[str, ...], tuple[tuple[float, ...], str]] = {
    COCO_NAMES: ((.026, .025, .025, .035, .035, .079, .079, .072, .072, .062, .062, .107, .107, .087, .087, .089, .089),
                 "COCO sigmas (COCO keypoint evaluation; OCHuman uses the same)"),
    CROWDPOSE_NAMES: ((.079, .079, .072, .072, .062, .062, .107, .107, .087, .087, .089, .089, .079, .079),
                      "CrowdPose sigmas (CrowdPose evaluation)"),
    AIC_NAMES: ((.01388152, .01515228, .01057665, .01417709, .01497891, .01402144, .03909642, .03686941, .01981803,
                 .03843971, .03412318, .02415081, .01291456, .01236173),
                "AI Challenger sigmas (AIC evaluation)"),
}


def normalise_name(name: str) -> str:
    """``"Head top"`` -> ``"head_top"``: one spelling for keypoint names across formats."""
    return "_".join(name.strip().lower().replace("-", " ").split())


def _keypoint_category(path: Path, categories: list) -> dict:
    with_keypoints = [c for c in categories if isinstance(c, dict) and c.get("keypoints")]
    if len(with_keypoints) != 1:
        raise DataError(f"{path}: expected one category with keypoint names, found {len(with_keypoints)}")
    return with_keypoints[0]


def _instance(path: Path, annotation: Any, num_keypoints: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(keypoints (K, 3) as in the file, bbox (4,) or NaN, area or NaN) of one annotation."""
    name = f"annotation id {annotation.get('id', '?')}" if isinstance(annotation, dict) else "an annotation"
    try:
        flat = np.asarray(annotation["keypoints"], dtype=np.float64)
        bbox = np.asarray(annotation.get("bbox", [np.nan] * 4), dtype=np.float64)
        area = float(annotation.get("area", np.nan))
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise DataError(f"{path}: {name}: missing or non-numeric keypoints, bbox or area "
                        f"({error.__class__.__name__})") from None
    if flat.shape != (3 * num_keypoints,):
        raise DataError(f"{path}: {name}: 'keypoints' has {flat.size} numbers, expected 3 x {num_keypoints}")
    if bbox.shape != (4,):
        raise DataError(f"{path}: {name}: 'bbox' must be [x, y, w, h]")
    return flat.reshape(num_keypoints, 3), bbox, area


def parse_coco(data: Any, source: Path, image_root: str | Path | None = None) -> KeypointDataset:
    """A :class:`KeypointDataset` from parsed COCO-style JSON ``data`` read from ``source``."""
    source = Path(source)
    sections = ("images", "annotations", "categories")
    if not isinstance(data, dict) or not all(isinstance(data.get(key), list) for key in sections):
        raise DataError(f"{source}: not a COCO keypoints file (expected an object with lists 'images', 'annotations', "
                        "'categories')")
    category = _keypoint_category(source, data["categories"])
    names = [normalise_name(str(name)) for name in category["keypoints"]]
    num_keypoints = len(names)
    try:
        file_names = {image["id"]: str(image["file_name"]) for image in data["images"]}
    except (KeyError, TypeError) as error:
        raise DataError(f"{source}: every image record needs 'id' and 'file_name' "
                        f"({error.__class__.__name__})") from None

    rows, image_ids, crowd = [], [], 0
    for annotation in data["annotations"]:
        if not isinstance(annotation, dict) or annotation.get("category_id", category.get("id")) != category.get("id"):
            continue
        if annotation.get("iscrowd", 0):
            crowd += 1
            continue
        if annotation.get("image_id") not in file_names:
            raise DataError(f"{source}: annotation id {annotation.get('id', '?')}: "
                            f"unknown image_id {annotation.get('image_id')!r}")
        rows.append(_instance(source, annotation, num_keypoints))
        image_ids.append(annotation["image_id"])
    if not rows:
        raise DataError(f"{source}: no keypoint annotations")
    raw = np.stack([row[0] for row in rows])  # (N, K, 3)
    boxes = np.stack([row[1] for row in rows])
    areas = np.array([row[2] for row in rows])
    visible = (raw[..., 2] > 0) & np.isfinite(raw[..., :2]).all(axis=-1)
    keep = np.flatnonzero(visible.any(axis=1))
    log.info("%s: %d instance(s) kept, %d crowd region(s) and %d without labelled keypoints dropped",
             source, len(keep), crowd, len(rows) - len(keep))
    if not len(keep):
        raise DataError(f"{source}: no instance has a labelled keypoint")
    keypoints = pixel_centre_to_canonical(raw[keep, :, :2])
    visible, boxes, areas = visible[keep], boxes[keep], areas[keep]
    boxes[:, :2] = pixel_centre_to_canonical(boxes[:, :2])
    no_box = ~(np.isfinite(boxes).all(axis=1) & (boxes[:, 2:] > 0).all(axis=1))
    if no_box.any():
        boxes[no_box] = box_from_keypoints(keypoints[no_box], visible[no_box])
    areas = np.where(np.isfinite(areas) & (areas > 0), areas, boxes[:, 2] * boxes[:, 3])

    unknown_set = ((DEFAULT_SIGMA,) * num_keypoints,
                   f"{DEFAULT_SIGMA:g} for every keypoint (ours: unknown keypoint set, no OKS sigmas)")
    sigmas, sigma_note = KNOWN_SIGMAS.get(tuple(names), unknown_set)
    kept_ids = [image_ids[i] for i in keep]
    kept_names = [file_names[i] for i in kept_ids]
    if image_root is None:
        image_root, image_paths = locate_images(source, kept_names, image_folders(source))
    else:
        image_paths = resolve_images(source, kept_names, image_root)
    return KeypointDataset(
        name=source.stem, source=source, image_paths=image_paths,
        image_ids=np.asarray(kept_ids, dtype=np.int64), keypoints=keypoints, visible=visible, boxes=boxes, areas=areas,
        keypoint_names=names, flip_pairs=flip_pairs_from_names(names), sigmas=sigmas, sigma_note=sigma_note,
        image_root=image_root, file_format="coco", category_id=int(category.get("id", 1)))


def image_folders(source: Path) -> list[Path]:
    """Where the common layouts keep a COCO-style file's images, in the order they are tried: the file's
    folder, its parent, ``images/`` beside ``annotations/``, and each of the last two's subfolder named by the
    file's split (COCO's ``annotations/person_keypoints_val2017.json`` with ``val2017/`` or ``images/val2017/``)."""
    folder = Path(source).absolute().parent
    split = Path(source).stem.split("_")[-1]
    return [folder, folder.parent, folder.parent / "images", folder.parent / split, folder.parent / "images" / split]


def load_coco_json(path: str | Path, image_root: str | Path | None = None) -> KeypointDataset:
    """A COCO-style keypoint JSON file as a :class:`KeypointDataset` named after the file.

    ``image_root`` is where the images' ``file_name`` paths start; without it, the first of
    :func:`image_folders` that holds every image.
    """
    path = Path(path)
    return parse_coco(read_json(path), path, image_root)
