"""MPII Human Pose in the JSON form of the HRNet / MMPose loaders (converted from the official ``.mat``).

Format: a JSON list with one record per person, ``{"image": "005808361.jpg", "center": [x, y],
"scale": s, "joints": [[x, y] x 16], "joints_vis": [0/1 x 16]}``. Coordinates are 1-based (MATLAB): pixel
centres are 1, 2, ...; joints and centre both become canonical through
:func:`heatbench.coords.pixel_centre_to_canonical` with ``first_index=1`` (HRNet shifts both; MMPose 1.x
shifts only the centre). ``joints_vis`` 0 means not annotated.

Box (HRNet convention): ``scale`` is the person height / 200 px, and the person box is the square of side
``200 * scale`` around the centre moved down by ``15 * scale`` px, as HRNet's MPII loader does before its
1.25 enlargement (the top-down crop applies that 1.25). OKS uses the box area. Flip pairs come from the
``l_``/``r_`` joint names; OKS sigmas are MMPose's MPII sigmas (PCKh is MPII's usual metric).

Head boxes, needed for exact PCKh (0.6 x the head-box diagonal), live in MPII's ``gt_valid.mat``, not in this
JSON. If every record carries ``"headbox": [[x1, y1], [x2, y2]]`` (1-based, the layout of one person in
``headboxes_src``) they are read; otherwise ``head_boxes`` is None and PCKh cannot be computed (ours: no
stand-in head size is invented).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..coords import pixel_centre_to_canonical
from ..errors import DataError
from .dataset import KeypointDataset, flip_pairs_from_names, read_json, resolve_images

MPII_NAMES = ("r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle", "pelvis", "thorax", "upper_neck", "head_top",
              "r_wrist", "r_elbow", "r_shoulder", "l_shoulder", "l_elbow", "l_wrist")
MPII_SIGMAS = (.089, .083, .107, .107, .083, .089, .026, .026, .026, .026, .062, .072, .179, .179, .072, .062)
PERSON_SCALE_PX = 200.0  # HRNet: ``scale`` is the person height in units of 200 px
CENTRE_SHIFT = 15.0  # HRNet moves the centre down by 15 * scale px


def is_mpii_records(data: Any) -> bool:
    """Whether parsed JSON looks like the MPII record list (a non-empty list of records with ``joints``)."""
    return isinstance(data, list) and bool(data) and isinstance(data[0], dict) and "joints" in data[0]


def _record(source: Path, number: int, record: Any) -> tuple:
    """(image, joints (K, 2), joints_vis (K,), centre (2,), scale, headbox (2, 2) or None), as in the file."""
    try:
        joints = np.asarray(record["joints"], dtype=np.float64)
        joints_vis = np.asarray(record["joints_vis"], dtype=np.float64)
        centre = np.asarray(record["center"], dtype=np.float64)
        scale = float(record["scale"])
        headbox = np.asarray(record["headbox"], dtype=np.float64) if "headbox" in record else None
        image = str(record["image"])
    except (KeyError, TypeError, ValueError) as error:
        field = error.args[0] if isinstance(error, KeyError) else error.__class__.__name__
        raise DataError(f"{source}: record {number}: missing or malformed field ({field})") from None
    shapes = {"joints": (joints.shape, (len(MPII_NAMES), 2)), "joints_vis": (joints_vis.shape, (len(MPII_NAMES),)),
              "center": (centre.shape, (2,)), "headbox": (None if headbox is None else headbox.shape, (2, 2))}
    for field, (shape, wanted) in shapes.items():
        if shape is not None and shape != wanted:
            raise DataError(f"{source}: record {number}: '{field}' has shape {shape}, expected {wanted}")
    if not (np.isfinite(centre).all() and np.isfinite(scale) and scale > 0):
        raise DataError(f"{source}: record {number}: 'center' and 'scale' must be finite, with scale > 0")
    return image, joints, joints_vis, centre, scale, headbox


def parse_mpii(records: Any, source: Path, image_root: str | Path | None = None) -> KeypointDataset:
    """A :class:`KeypointDataset` from the parsed MPII record list ``records`` read from ``source``."""
    source = Path(source)
    if not is_mpii_records(records):
        raise DataError(f"{source}: not an MPII record list (expected a JSON list of objects with 'joints')")
    fields = zip(*(_record(source, number, record) for number, record in enumerate(records)))
    images, joints, joints_vis, centres, scales, headboxes = fields
    has_headbox = [headbox is not None for headbox in headboxes]
    if any(has_headbox) and not all(has_headbox):
        raise DataError(f"{source}: record {has_headbox.index(not has_headbox[0])}: 'headbox' must be in every "
                        "record or in none")
    keypoints = pixel_centre_to_canonical(np.stack(joints), first_index=1)
    scales = np.asarray(scales)
    centres = pixel_centre_to_canonical(np.stack(centres), first_index=1)
    centres[:, 1] += CENTRE_SHIFT * scales
    side = PERSON_SCALE_PX * scales[:, None]
    boxes = np.concatenate([centres - side / 2, side, side], axis=1)
    head_boxes = None
    if all(has_headbox):
        corners = pixel_centre_to_canonical(np.stack(headboxes), first_index=1)  # (N, 2 corners, 2)
        head_boxes = np.concatenate([corners.min(axis=1), np.abs(corners[:, 1] - corners[:, 0])], axis=1)
    _, image_ids = np.unique(images, return_inverse=True)
    image_root = Path(image_root) if image_root is not None else source.parent
    return KeypointDataset(
        name=source.stem, source=source, image_paths=resolve_images(source, images, image_root), image_ids=image_ids,
        keypoints=keypoints, visible=np.stack(joints_vis) > 0, boxes=boxes, areas=boxes[:, 2] * boxes[:, 3],
        keypoint_names=list(MPII_NAMES), flip_pairs=flip_pairs_from_names(MPII_NAMES), sigmas=MPII_SIGMAS,
        sigma_note="MPII sigmas (MMPose's MPII metadata; PCKh is MPII's usual metric)", head_boxes=head_boxes,
        image_root=image_root, file_format="mpii")


def load_mpii_json(path: str | Path, image_root: str | Path | None = None) -> KeypointDataset:
    """An HRNet/MMPose MPII JSON file as a :class:`KeypointDataset` named after the file.

    ``image_root`` (default: the JSON's folder) is where the records' ``image`` names start.
    """
    path = Path(path)
    return parse_mpii(read_json(path), path, image_root)
