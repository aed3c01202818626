"""The in-memory form every loader produces: one row per annotated instance, in canonical image coordinates.

Keypoints are canonical image-plane coordinates (``docs/conventions.md``: pixel i covers [i, i+1)), converted
once by the loaders through :mod:`heatbench.coords`. Boxes live in the same frame as the keypoints: a format's
``[x, y, w, h]`` box has its corner converted like a keypoint and keeps its size, so box and keypoints keep
the relation they had in the file (HRNet takes the box centre as ``x + w / 2`` in the keypoints' frame).

Where a format has no boxes (DeepLabCut CSVs), :func:`box_from_keypoints` gives the tight box of the
labelled keypoints grown by 5% of its larger side on every side, at least 1 px (ours: the top-down crop
adds its own 1.25x padding on top, so the margin only has to cover the body beyond the outermost labelled
points; the 1 px floor keeps a one-keypoint box non-empty). OKS uses ``areas``: the format's ``area`` where
it has one, else the box area (as the CrowdPose evaluator does).

This module also holds what several loaders share: reading JSON, checking that images exist, naming flip
pairs from left/right keypoint names. Loader errors are :class:`heatbench.errors.DataError` with a one-line
message that starts with the file it is about.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import DataError, HeatbenchError

log = logging.getLogger(__name__)
BOX_MARGIN = 0.05  # of the larger side of a keypoint box, added on every side (ours)
DEFAULT_SIGMA = 0.05  # OKS sigma for data sets that define none (ours)


@dataclass
class KeypointDataset:
    """Annotated instances of one data set; arrays are indexed by instance (N) and keypoint (K).

    ``keypoints`` (N, K, 2) float64 canonical image px, NaN where unlabelled; ``visible`` (N, K) float32,
    1 labelled / 0 not. ``boxes`` (N, 4) canonical (x, y, w, h); ``areas`` (N,) px^2 for OKS; ``head_boxes``
    (N, 4) canonical (x, y, w, h) or None. ``image_ids`` (N,) int64, shared by instances of one image.
    ``flip_pairs`` None means mirroring is undefined for this data (no flip augmentation, no flip test).
    ``image_root`` is the folder the file's image names start from; ``file_format`` the loader's ("dlc",
    "coco", "mpii", "synthetic"), which says the prediction files a run writes; ``category_id`` the COCO
    category; ``individuals`` (N,) each instance's animal in a multi-animal DeepLabCut table, else None.
    ``crops`` (N, 4) canonical (x, y, w, h) is the image region each instance's crop covers at every input
    size, stretched onto it; None: the box padded to the input's aspect and enlarged (``topdown.crop_box``).
    ``renderer`` makes the images of a rendered set (``heatbench.data.synthetic``), called as
    ``renderer(image_ids (B,), image-to-input affines (B, 2, 3), input size, device)`` -> (B, 3, H, W) in
    [0, 1]; None: images are the files at ``image_paths``.
    Construction normalises visibility: a non-finite coordinate is unlabelled, and unlabelled ones are NaN.
    """

    name: str
    source: Path
    image_paths: list[Path]
    image_ids: np.ndarray
    keypoints: np.ndarray
    visible: np.ndarray
    boxes: np.ndarray
    areas: np.ndarray
    keypoint_names: list[str]
    flip_pairs: list[tuple[int, int]] | None
    sigmas: np.ndarray
    sigma_note: str
    head_boxes: np.ndarray | None = None
    image_root: Path | None = None
    file_format: str = ""
    category_id: int = 1
    individuals: list[str] | None = None
    crops: np.ndarray | None = None
    renderer: Callable[..., Any] | None = None

    def __post_init__(self) -> None:
        self.source = Path(self.source)
        self.image_paths = [Path(path) for path in self.image_paths]
        self.image_ids = np.asarray(self.image_ids, dtype=np.int64)
        self.keypoints = np.array(self.keypoints, dtype=np.float64)
        self.boxes = np.asarray(self.boxes, dtype=np.float64)
        self.areas = np.asarray(self.areas, dtype=np.float64)
        self.sigmas = np.asarray(self.sigmas, dtype=np.float64)
        self.keypoint_names = list(self.keypoint_names)
        if self.keypoints.ndim != 3 or self.keypoints.shape[-1] != 2:
            raise ValueError(f"{self.name}: keypoints must be (N, K, 2), got {self.keypoints.shape}")
        count, num_keypoints = self.keypoints.shape[:2]
        expected = {"image_paths": (len(self.image_paths),), "image_ids": self.image_ids.shape,
                    "visible": np.shape(self.visible), "boxes": self.boxes.shape, "areas": self.areas.shape,
                    "keypoint_names": (len(self.keypoint_names),), "sigmas": self.sigmas.shape}
        wanted = {"image_paths": (count,), "image_ids": (count,), "visible": (count, num_keypoints),
                  "boxes": (count, 4), "areas": (count,), "keypoint_names": (num_keypoints,),
                  "sigmas": (num_keypoints,)}
        if self.individuals is not None:
            self.individuals = list(self.individuals)
            expected["individuals"], wanted["individuals"] = (len(self.individuals),), (count,)
        if self.head_boxes is not None:
            self.head_boxes = np.asarray(self.head_boxes, dtype=np.float64)
            expected["head_boxes"], wanted["head_boxes"] = self.head_boxes.shape, (count, 4)
        if self.crops is not None:
            self.crops = np.asarray(self.crops, dtype=np.float64)
            expected["crops"], wanted["crops"] = self.crops.shape, (count, 4)
        wrong = [f"{field} {expected[field]} (want {shape})"
                 for field, shape in wanted.items() if expected[field] != shape]
        if wrong:
            raise ValueError(f"{self.name}: inconsistent shapes for N={count}, K={num_keypoints}: {', '.join(wrong)}")
        if not (np.isfinite(self.boxes).all() and (self.boxes[:, 2:] > 0).all()):
            raise ValueError(f"{self.name}: every box needs finite coordinates and a positive width and height")
        labelled = (np.asarray(self.visible) > 0) & np.isfinite(self.keypoints).all(axis=-1)
        self.visible = labelled.astype(np.float32)
        self.keypoints[~labelled] = np.nan
        if self.flip_pairs is not None:
            self.flip_pairs = [(int(left), int(right)) for left, right in self.flip_pairs]
            used = [index for pair in self.flip_pairs for index in pair]
            if len(set(used)) != len(used) or not all(0 <= index < num_keypoints for index in used):
                raise ValueError(f"{self.name}: flip pairs {self.flip_pairs} must be distinct indices "
                                 f"below K={num_keypoints}")

    def __len__(self) -> int:
        return len(self.image_paths)

    @property
    def num_keypoints(self) -> int:
        return self.keypoints.shape[1]

    @property
    def image_folder(self) -> Path:
        """Where the file's image names start: ``image_root``, or for a data set made without one the
        source's folder."""
        return self.image_root if self.image_root is not None else self.source.parent

    def summary(self) -> list[str]:
        """What a run would load, one fact a line: source and format, image folder, images, instances (and
        individuals), keypoint names, the labelled share of keypoint slots, flip pairs and OKS sigmas."""
        individuals = list(dict.fromkeys(self.individuals or []))
        animals = f" ({len(individuals)} individuals: {', '.join(individuals)})" if individuals else ""
        return [f"data:       {self.name} ({self.file_format or 'unknown format'}) from {self.source}",
                f"image root: {self.image_folder}",
                f"images:     {len(np.unique(self.image_ids))}",
                f"instances:  {len(self)}{animals}",
                f"keypoints:  {self.num_keypoints}: {', '.join(self.keypoint_names)}",
                f"labelled:   {self.visible.mean():.1%} of keypoint slots ({int(self.visible.sum())} of "
                f"{self.visible.size})",
                f"flip pairs: {len(self.flip_pairs) if self.flip_pairs else 'none (no flip augmentation or test)'}",
                f"OKS sigmas: {self.sigma_note}"]

    def image_names(self) -> list[str]:
        """Each instance's image as the annotation file names it: relative to ``image_root``, with ``/``."""
        return [Path(os.path.relpath(path, self.image_folder)).as_posix() for path in self.image_paths]

    def subset(self, indices: Sequence[int] | np.ndarray) -> KeypointDataset:
        """The instances at ``indices``, in that order, with the data set's metadata unchanged."""
        index = np.asarray(indices, dtype=np.int64).reshape(-1)
        return dataclasses.replace(
            self, image_paths=[self.image_paths[i] for i in index], image_ids=self.image_ids[index],
            keypoints=self.keypoints[index], visible=self.visible[index], boxes=self.boxes[index],
            areas=self.areas[index], head_boxes=None if self.head_boxes is None else self.head_boxes[index],
            individuals=None if self.individuals is None else [self.individuals[i] for i in index],
            crops=None if self.crops is None else self.crops[index])

    def split(self, val_fraction: float = 0.2, seed: int = 0) -> tuple[KeypointDataset, KeypointDataset]:
        """(train, val) split by image, so that no image has instances on both sides.

        ``round(val_fraction * number of images)`` images, drawn by ``numpy.random.default_rng(seed)`` from the
        sorted image ids, go to validation; the same data, fraction and seed always give the same split.
        """
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        images = np.unique(self.image_ids)
        num_val = int(round(val_fraction * len(images)))
        if not 0 < num_val < len(images):
            raise DataError(f"{self.source}: {len(images)} image(s) cannot be split "
                            f"{1 - val_fraction:g}/{val_fraction:g} into two non-empty parts")
        val_images = np.random.default_rng(seed).permutation(images)[:num_val]
        in_val = np.isin(self.image_ids, val_images)
        return self.subset(np.flatnonzero(~in_val)), self.subset(np.flatnonzero(in_val))


def box_from_keypoints(keypoints: np.ndarray, visible: np.ndarray, margin: float = BOX_MARGIN) -> np.ndarray:
    """(N, 4) canonical (x, y, w, h) boxes around the labelled keypoints of (N, K, 2), (N, K) instances.

    Each box is the tight box grown by ``margin`` times its larger side (at least 1 px) on every side.
    Instances need at least one labelled keypoint.
    """
    labelled = (visible > 0) & np.isfinite(keypoints).all(axis=-1)
    if not labelled.any(axis=1).all():
        raise ValueError("box_from_keypoints needs at least one labelled keypoint per instance")
    masked = np.where(labelled[..., None], keypoints, np.nan)
    low, high = np.nanmin(masked, axis=1), np.nanmax(masked, axis=1)  # (N, 2)
    pad = np.maximum(margin * (high - low).max(axis=1, keepdims=True), 1.0)
    return np.concatenate([low - pad, high - low + 2 * pad], axis=1)


def flip_pairs_from_names(names: Sequence[str]) -> list[tuple[int, int]] | None:
    """Index pairs (lower first) of names that differ only in a ``left_``/``right_`` or ``l_``/``r_`` prefix.

    None when no name pairs up: without a left/right naming nothing says how the data mirrors.
    """
    index = {name: i for i, name in enumerate(names)}
    pairs = []
    for i, name in enumerate(names):
        for left, right in (("left_", "right_"), ("l_", "r_")):
            if name.startswith(left) and right + name[len(left):] in index:
                pairs.append(tuple(sorted((i, index[right + name[len(left):]]))))
    return sorted(pairs) or None


def check_keypoint_names(dataset: KeypointDataset, expected: Sequence[str], expected_from: str | Path,
                         flag: str) -> None:
    """A one-line HeatbenchError naming both sources when ``dataset`` has other keypoint names (or another
    order) than ``expected``, which come from ``expected_from`` (another data set, a checkpoint)."""
    ours, theirs = dataset.keypoint_names, list(expected)
    if ours == theirs:
        return
    position = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
    raise HeatbenchError(f"{flag} {dataset.source}: keypoint names differ from {expected_from}'s "
                         f"({len(ours)} vs {len(theirs)}; keypoint {position} is {_name_at(ours, position)}, "
                         f"not {_name_at(theirs, position)})")


def _name_at(names: list[str], index: int) -> str:
    return repr(names[index]) if index < len(names) else "missing"


def read_json(path: Path) -> Any:
    """The parsed content of a JSON file; a missing, unreadable or malformed file is a DataError."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: malformed JSON ({error.msg} at line {error.lineno}, column {error.colno})") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read ({error.__class__.__name__}: {error})") from None


def resolve_images(source: Path, names: Sequence[str], image_root: str | Path | None) -> list[Path]:
    """Absolute image paths for file names relative to ``image_root`` (default: the folder of ``source``).

    Every image must exist; they are not decoded here.
    """
    root = Path(image_root) if image_root is not None else source.parent
    paths = [Path(os.path.abspath(root / name)) for name in names]
    missing = sorted(str(path) for path in set(paths) if not path.is_file())
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(f"{source}: image {missing[0]} not found{more}; pass the image folder as image_root")
    return paths


def locate_images(source: Path, names: Sequence[str], candidates: Sequence[Path]) -> tuple[Path, list[Path]]:
    """(root, absolute image paths) from the first of ``candidates`` that holds every image; logged, since a
    user who did not name the folder should see which one was taken. None holding them all is a DataError
    listing every folder tried."""
    roots = list(dict.fromkeys(Path(os.path.abspath(candidate)) for candidate in candidates))
    for root in roots:
        try:
            paths = resolve_images(source, names, root)
        except DataError:
            continue
        log.info("%s: images from %s", source, root)
        return root, paths
    raise DataError(f"{source}: the images (e.g. {names[0]!r}) are not all under any of "
                    f"{', '.join(map(str, roots))}; pass the image folder as --image-root")
