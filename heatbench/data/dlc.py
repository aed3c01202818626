"""DeepLabCut / lightning-pose label tables (``CollectedData*.csv``).

Format: exactly three header rows whose first cells are ``scorer``, ``bodyparts`` and ``coords``, then one
row per labelled frame. The leading index column(s) hold the image path relative to the image root (one
column ``labeled-data/video/img.png`` as lightning-pose writes it, or one column per path part as pandas
writes DeepLabCut's MultiIndex; index columns are the ones whose ``coords`` cell is empty), then an ``x``
and a ``y`` column per body part. An empty cell (or NaN, or any non-finite number) means "not labelled".
Multi-animal tables (an ``individuals`` header row) are not supported.

Coordinates are 0-based pixel centres, like COCO, and become canonical through
:func:`heatbench.coords.pixel_centre_to_canonical`. One instance per frame; frames with no labelled keypoint
are dropped (nothing to learn or score). The table has no boxes, so each instance gets
:func:`heatbench.data.dataset.box_from_keypoints`, and no left/right pairing, so ``flip_pairs`` is None
(ours: pairing by names would be a guess, and for side views a mirror does not swap body sides). No OKS
sigmas exist for these data: every keypoint gets 0.05 (ours).
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np

from ..coords import pixel_centre_to_canonical
from ..errors import DataError
from .dataset import DEFAULT_SIGMA, KeypointDataset, box_from_keypoints, resolve_images

log = logging.getLogger(__name__)
HEADER = ("scorer", "bodyparts", "coords")


def _read_rows(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, cells) of every non-blank row."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            return [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path}: cannot read as CSV ({error.__class__.__name__}: {error})") from None


def _parse_header(path: Path, rows: list[list[str]]) -> tuple[int, list[str]]:
    """(number of index columns, body part names) from the three header rows."""
    for number, expected in enumerate(HEADER, start=1):
        first = rows[number - 1][0].strip() if len(rows) >= number else "<missing>"
        if first != expected:
            hint = " (multi-animal tables are not supported)" if first == "individuals" else ""
            raise DataError(f"{path}: expected the DeepLabCut header rows scorer, bodyparts, coords; "
                            f"row {number} starts with {first!r}{hint}")
    bodyparts, coords = rows[1], rows[2]
    index_columns = 1
    while index_columns < len(coords) and not coords[index_columns].strip():
        index_columns += 1
    axes = [cell.strip() for cell in coords[index_columns:]]
    names = [cell.strip() for cell in bodyparts[index_columns:]]
    if not axes or len(axes) % 2 or axes != ["x", "y"] * (len(axes) // 2):
        raise DataError(f"{path}: row 3 (coords) must be x, y for each body part after the path column(s)")
    if len(names) != len(axes) or names[0::2] != names[1::2]:
        raise DataError(f"{path}: row 2 (bodyparts) must name each body part once for its x and once for its y")
    return index_columns, names[0::2]


def _parse_value(path: Path, row_number: int, column: int, cell: str) -> float:
    if not cell.strip():
        return np.nan
    try:
        return float(cell)
    except ValueError:
        raise DataError(f"{path}: row {row_number}, column {column + 1}: {cell!r} is not a number") from None


def load_dlc_csv(path: str | Path, image_root: str | Path | None = None) -> KeypointDataset:
    """A DeepLabCut-style label CSV as a :class:`KeypointDataset` named after its folder.

    ``image_root`` (default: the CSV's folder) is where the first column's relative paths start.
    """
    path = Path(path)
    rows = _read_rows(path)
    index_columns, names = _parse_header(path, [row for _, row in rows[:3]])
    width = index_columns + 2 * len(names)
    image_names, coordinates = [], []
    for row_number, row in rows[3:]:
        row = row + [""] * (width - len(row)) if len(row) < width else row
        if len(row) > width or not row[0].strip():
            raise DataError(f"{path}: row {row_number} has {len(row)} cells and path {row[0]!r}; "
                            f"expected {width} cells starting with an image path")
        image_names.append("/".join(part.strip() for part in row[:index_columns] if part.strip()).replace("\\", "/"))
        coordinates.append([_parse_value(path, row_number, column, row[column])
                            for column in range(index_columns, width)])
    if not image_names:
        raise DataError(f"{path}: no frames after the three header rows")

    keypoints = pixel_centre_to_canonical(np.asarray(coordinates, dtype=np.float64).reshape(len(image_names), -1, 2))
    visible = np.isfinite(keypoints).all(axis=-1)
    labelled = visible.any(axis=1)
    if not labelled.all():
        log.info("%s: dropped %d frame(s) without a labelled keypoint", path, int((~labelled).sum()))
    if not labelled.any():
        raise DataError(f"{path}: no frame has a labelled keypoint")
    keep = np.flatnonzero(labelled)
    keypoints, visible = keypoints[keep], visible[keep]
    image_names = [image_names[i] for i in keep]
    boxes = box_from_keypoints(keypoints, visible)
    _, image_ids = np.unique(image_names, return_inverse=True)
    return KeypointDataset(
        name=path.absolute().parent.name, source=path, image_paths=resolve_images(path, image_names, image_root),
        image_ids=image_ids, keypoints=keypoints, visible=visible, boxes=boxes, areas=boxes[:, 2] * boxes[:, 3],
        keypoint_names=names, flip_pairs=None, sigmas=np.full(len(names), DEFAULT_SIGMA),
        sigma_note=f"{DEFAULT_SIGMA:g} for every keypoint (ours: the data set defines no OKS sigmas)")
