"""DeepLabCut / lightning-pose label tables (``CollectedData*.csv`` or ``.h5``) and whole DeepLabCut projects.

CSV format: the header rows ``scorer``, ``bodyparts`` and ``coords`` (multi-animal tables have an
``individuals`` row after ``scorer``), then one row per labelled frame. The leading index column(s) hold
the image path relative to the image root (one column ``labeled-data/video/img.png`` as lightning-pose
writes it, or one column per path part as pandas writes DeepLabCut's MultiIndex; index columns are the ones
whose ``coords`` cell is empty), then an ``x`` and a ``y`` column per body part (per individual and body
part in multi-animal tables). An empty cell (or NaN, or any non-finite number) means "not labelled". The
``.h5`` form is the same table as DeepLabCut writes it with pandas: columns with the levels scorer,
[individuals,] bodyparts, coords; it is read with ``pandas.read_hdf`` (PyTables).

Image paths that begin with ``labeled-data/`` start from the project folder: the parent of the
``labeled-data`` folder the table lies in (DeepLabCut keeps ``CollectedData_<scorer>.csv`` inside
``labeled-data/<video>/``); any other table's paths start from its own folder. ``config.yaml`` names a
whole project: every ``labeled-data/*/CollectedData_*.h5``, or the ``.csv`` where a folder has no .h5, with
the keypoint names and their order from the config's ``bodyparts`` (``multianimalbodyparts`` then
``uniquebodyparts`` in multi-animal projects).

Coordinates are 0-based pixel centres, like COCO, and become canonical through
:func:`heatbench.coords.pixel_centre_to_canonical`. One instance per frame, or per labelled individual and
frame in multi-animal tables (an individual's body parts it has no columns for, such as DeepLabCut's
``single`` individual's, are unlabelled; a project that mixes single- and multi-animal tables names the
single-animal ones' individual ``animal``); frames and individuals with no labelled keypoint in a frame are
dropped (nothing to learn or score), and an individual labelled in no frame at all is an error. The table
has no boxes, so each instance gets :func:`heatbench.data.dataset.box_from_keypoints` from its own
keypoints, and no left/right pairing, so ``flip_pairs`` is None (ours: pairing by names would be a guess,
and for side views a mirror does not swap body sides). No OKS sigmas exist for these data: every keypoint
gets 0.05 (ours).
"""
from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..coords import pixel_centre_to_canonical
from ..errors import DataError
from .dataset import DEFAULT_SIGMA, KeypointDataset, box_from_keypoints, resolve_images

log = logging.getLogger(__name__)
HEADER = ("scorer", "bodyparts", "coords")
MULTI_ANIMAL_HEADER = ("scorer", "individuals", "bodyparts", "coords")
PROJECT_FOLDER = "labeled-data"
UNNAMED = "animal"  # the individual of a single-animal table's instances in a project with multi-animal tables


@dataclass
class LabelTable:
    """One label file as read: per frame its image path, per column its individual (None in single-animal
    tables) and body part, and the (frames, columns, 2) x, y values as in the file, NaN where unlabelled."""

    source: Path
    image_names: list[str]
    individuals: list[str | None]
    bodyparts: list[str]
    values: np.ndarray


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


def _header(rows: list[list[str]]) -> tuple[str, ...]:
    """The header rows a table has: multi-animal ones when the second row is ``individuals``."""
    return MULTI_ANIMAL_HEADER if len(rows) > 1 and rows[1][0].strip() == "individuals" else HEADER


def _parse_header(path: Path, rows: list[list[str]]) -> tuple[int, list[str | None], list[str]]:
    """(number of index columns, individual and body part of each x/y column pair) from the header rows."""
    header = _header(rows)
    multi_animal = header == MULTI_ANIMAL_HEADER
    for number, expected in enumerate(header, start=1):
        first = rows[number - 1][0].strip() if len(rows) >= number else "<missing>"
        if first != expected:
            raise DataError(f"{path}: expected the DeepLabCut header rows {', '.join(header)}; "
                            f"row {number} starts with {first!r}")
    bodyparts, coords = rows[len(header) - 2], rows[len(header) - 1]
    index_columns = 1
    while index_columns < len(coords) and not coords[index_columns].strip():
        index_columns += 1
    axes = [cell.strip() for cell in coords[index_columns:]]
    names = [cell.strip() for cell in bodyparts[index_columns:]]
    owners = [cell.strip() for cell in rows[1][index_columns:]] if multi_animal else [None] * len(names)
    if not axes or len(axes) % 2 or axes != ["x", "y"] * (len(axes) // 2):
        raise DataError(f"{path}: row {len(header)} (coords) must be x, y for each body part after the path column(s)")
    columns = list(zip(owners, names))
    if len(names) != len(axes) or len(owners) != len(axes) or columns[0::2] != columns[1::2]:
        raise DataError(f"{path}: row {len(header) - 1} (bodyparts) must name each body part once for its x and "
                        "once for its y")
    return index_columns, owners[0::2], names[0::2]


def _parse_value(path: Path, row_number: int, column: int, cell: str) -> float:
    if not cell.strip():
        return np.nan
    try:
        return float(cell)
    except ValueError:
        raise DataError(f"{path}: row {row_number}, column {column + 1}: {cell!r} is not a number") from None


def read_csv_table(path: str | Path) -> LabelTable:
    """A DeepLabCut-style label CSV as it is in the file."""
    path = Path(path)
    rows = _read_rows(path)
    header_rows = len(_header([row for _, row in rows[:2]]))
    index_columns, individuals, bodyparts = _parse_header(path, [row for _, row in rows[:header_rows]])
    width = index_columns + 2 * len(bodyparts)
    image_names, coordinates = [], []
    for row_number, row in rows[header_rows:]:
        row = row + [""] * (width - len(row)) if len(row) < width else row
        if len(row) > width or not row[0].strip():
            raise DataError(f"{path}: row {row_number} has {len(row)} cells and path {row[0]!r}; "
                            f"expected {width} cells starting with an image path")
        image_names.append("/".join(part.strip() for part in row[:index_columns] if part.strip()).replace("\\", "/"))
        coordinates.append([_parse_value(path, row_number, column, row[column])
                            for column in range(index_columns, width)])
    if not image_names:
        raise DataError(f"{path}: no frames after the header rows")
    values = np.asarray(coordinates, dtype=np.float64).reshape(len(image_names), len(bodyparts), 2)
    return LabelTable(path, image_names, individuals, bodyparts, values)


def read_h5_table(path: str | Path) -> LabelTable:
    """A DeepLabCut label table stored by pandas in HDF5, as it is in the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        frame = pd.read_hdf(path)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as error:  # PyTables' errors are RuntimeErrors
        raise DataError(f"{path}: not a DeepLabCut label table (pandas cannot read it: "
                        f"{error.__class__.__name__})") from None
    levels = list(frame.columns.names) if isinstance(frame, pd.DataFrame) else None
    if levels not in (list(HEADER), list(MULTI_ANIMAL_HEADER)):
        raise DataError(f"{path}: not a DeepLabCut label table (column levels {levels}, expected scorer, "
                        "[individuals,] bodyparts, coords)")
    scorer = frame.columns[0][0]
    pairs = list(dict.fromkeys(column[1:-1] for column in frame.columns))  # ([individual,] body part)
    try:
        values = np.stack([frame[[(scorer, *pair, axis) for axis in ("x", "y")]].to_numpy(dtype=np.float64)
                           for pair in pairs], axis=1)
    except (KeyError, ValueError, TypeError) as error:
        raise DataError(f"{path}: every body part needs numeric x and y columns "
                        f"({error.__class__.__name__})") from None
    image_names = ["/".join(map(str, name)) if isinstance(name, tuple) else str(name).replace("\\", "/")
                   for name in frame.index]
    individuals = [pair[0] if len(pair) == 2 else None for pair in pairs]
    return LabelTable(path, image_names, individuals, [pair[-1] for pair in pairs], values)


def read_table(path: str | Path) -> LabelTable:
    """A label table from its ``.h5`` or ``.csv`` file."""
    return read_h5_table(path) if Path(path).suffix.lower() == ".h5" else read_csv_table(path)


@dataclass
class Instances:
    """The labelled instances of one or more tables: image path and (K, 2) file-pixel keypoints of each."""

    image_names: list[str]
    keypoints: np.ndarray
    keypoint_names: list[str]
    individuals: list[str] | None


def instances(table: LabelTable) -> Instances:
    """One instance per frame (per labelled individual and frame in multi-animal tables); instances without
    a labelled keypoint are dropped, and a multi-animal individual labelled in no frame is an error."""
    names = list(dict.fromkeys(table.bodyparts))
    owners = list(dict.fromkeys(table.individuals))
    grid = np.full((len(table.image_names), len(owners), len(names), 2), np.nan)  # frame, individual, keypoint
    for column, (owner, bodypart) in enumerate(zip(table.individuals, table.bodyparts)):
        grid[:, owners.index(owner), names.index(bodypart)] = table.values[:, column]
    labelled = np.isfinite(grid).all(axis=-1).any(axis=-1)  # (frames, individuals)
    for slot, owner in enumerate(owners):
        if owner is not None and not labelled[:, slot].any():
            raise DataError(f"{table.source}: individual {owner!r} has no labelled keypoint in any frame")
    if not labelled.any():
        raise DataError(f"{table.source}: no frame has a labelled keypoint")
    unlabelled = int((~labelled.any(axis=1)).sum())
    if unlabelled:
        log.info("%s: dropped %d frame(s) without a labelled keypoint", table.source, unlabelled)
    frames, slots = np.nonzero(labelled)  # frame by frame, individuals in column order
    multi_animal = owners != [None]
    return Instances([table.image_names[frame] for frame in frames], grid[frames, slots], names,
                     [owners[slot] for slot in slots] if multi_animal else None)


def _project_root(path: Path, image_names: list[str]) -> Path:
    """Where a table's image paths start: the project folder for ``labeled-data/...`` paths of a table
    inside a ``labeled-data`` folder (DeepLabCut's layout), else the table's folder."""
    folder = path.absolute().parent
    if all(name.startswith(f"{PROJECT_FOLDER}/") for name in image_names):
        for ancestor in (folder, *folder.parents):
            if ancestor.name == PROJECT_FOLDER:
                return ancestor.parent
    return folder


def _dataset(name: str, source: Path, found: Instances, image_root: Path) -> KeypointDataset:
    keypoints = pixel_centre_to_canonical(found.keypoints)
    visible = np.isfinite(keypoints).all(axis=-1)
    boxes = box_from_keypoints(keypoints, visible)
    _, image_ids = np.unique(found.image_names, return_inverse=True)
    names = found.keypoint_names
    return KeypointDataset(
        name=name, source=source, image_paths=resolve_images(source, found.image_names, image_root),
        image_ids=image_ids, keypoints=keypoints, visible=visible, boxes=boxes, areas=boxes[:, 2] * boxes[:, 3],
        keypoint_names=names, flip_pairs=None, sigmas=np.full(len(names), DEFAULT_SIGMA),
        sigma_note=f"{DEFAULT_SIGMA:g} for every keypoint (ours: the data set defines no OKS sigmas)",
        image_root=image_root, file_format="dlc", individuals=found.individuals)


def load_dlc_table(path: str | Path, image_root: str | Path | None = None) -> KeypointDataset:
    """A DeepLabCut label table (``.csv`` or ``.h5``) as a :class:`KeypointDataset` named after its folder.

    ``image_root`` is where the image paths start (default: see the module docstring).
    """
    path = Path(path)
    found = instances(read_table(path))
    root = Path(image_root) if image_root is not None else _project_root(path, found.image_names)
    return _dataset(path.absolute().parent.name, path, found, root)


load_dlc_csv = load_dlc_table  # the name the loaders had before .h5 tables


def project_keypoint_names(config: Path, settings: dict) -> list[str]:
    """A DeepLabCut config's keypoint names: ``bodyparts``, or in a multi-animal project (``bodyparts:
    MULTI!``) ``multianimalbodyparts`` then ``uniquebodyparts``."""
    names = settings.get("bodyparts")
    if names == "MULTI!":
        names = [*(settings.get("multianimalbodyparts") or []), *(settings.get("uniquebodyparts") or [])]
    if not isinstance(names, list) or not names or not all(isinstance(name, str) for name in names):
        raise DataError(f"{config}: 'bodyparts' must list the body part names")
    return names


def load_dlc_project(config: str | Path) -> KeypointDataset:
    """Every labelled frame of a DeepLabCut project, named by its ``config.yaml``; see the module docstring."""
    import yaml

    config = Path(config)
    try:
        settings = yaml.safe_load(config.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{config}: no such file") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise DataError(f"{config}: cannot read as YAML ({error.__class__.__name__})") from None
    if not isinstance(settings, dict):
        raise DataError(f"{config}: not a DeepLabCut project config (expected a YAML mapping)")
    names = project_keypoint_names(config, settings)
    root = config.absolute().parent
    folders = sorted(path for path in (root / PROJECT_FOLDER).glob("*") if path.is_dir())
    files = [file for folder in folders
             for file in sorted(folder.glob("CollectedData_*.h5")) or sorted(folder.glob("CollectedData_*.csv"))]
    if not files:
        raise DataError(f"{config}: no CollectedData_*.h5 or .csv in any folder of {root / PROJECT_FOLDER}")
    parts = [instances(read_table(file)) for file in files]
    keypoints = []
    for file, part in zip(files, parts):
        unknown = [name for name in part.keypoint_names if name not in names]
        if unknown:
            raise DataError(f"{file}: body part {unknown[0]!r} is not in {config.name}'s bodyparts")
        ordered = np.full((len(part.image_names), len(names), 2), np.nan)  # the config's order
        ordered[:, [names.index(name) for name in part.keypoint_names]] = part.keypoints
        keypoints.append(ordered)
    multi_animal = any(part.individuals is not None for part in parts)
    found = Instances([name for part in parts for name in part.image_names], np.concatenate(keypoints), names,
                      [owner for part in parts for owner in part.individuals or [UNNAMED] * len(part.image_names)]
                      if multi_animal else None)
    log.info("%s: %d label file(s) from %d folder(s)", config, len(files), len(folders))
    return _dataset(str(settings.get("Task") or root.name), config, found, root)
