"""Data laid out the way users have it, built from the files in tests/data: a DeepLabCut project, a COCO set
with ``images/`` beside ``annotations/``, and a train/val pair of label tables."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from heatbench.data.dlc import read_csv_table

DATA = Path(__file__).parent / "data"
MOUSE_MINI = DATA / "mirror_mouse_mini" / "CollectedData.csv"
COCO = DATA / "mmpose_samples" / "coco"
SECOND_MOUSE_SHIFT = 12.0  # px the second animal of the multi-animal video sits from the first
SECOND_MOUSE_FRAMES = 2  # the second animal is labelled in the first two frames of that video only


def _images(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(MOUSE_MINI.parent / "labeled-data" / name, folder / name)


def _index(video: str, names: list[str]) -> pd.MultiIndex:
    """The row index DeepLabCut 2.2+ writes: one level per path part."""
    return pd.MultiIndex.from_tuples([("labeled-data", video, name) for name in names])


def dlc_project(root: Path) -> Path:
    """A two-video DeepLabCut project of the 8 mini frames; returns its config.yaml.

    ``video1`` (frames 1-4) has a single-animal ``CollectedData_rick.h5``; ``video2`` (frames 5-8) a
    multi-animal ``CollectedData_rick.csv`` with mouse ``m1`` (the real labels) and ``m2`` (the same labels
    shifted by SECOND_MOUSE_SHIFT px, in the first SECOND_MOUSE_FRAMES frames only): 4 + 4 + 2 instances.
    """
    table = read_csv_table(MOUSE_MINI)
    names = [Path(name).name for name in table.image_names]
    bodyparts = table.bodyparts
    flat = table.values.reshape(len(names), -1)
    _images(root / "labeled-data" / "video1", names[:4])
    _images(root / "labeled-data" / "video2", names[4:])

    columns = pd.MultiIndex.from_tuples([("rick", part, axis) for part in bodyparts for axis in "xy"],
                                        names=["scorer", "bodyparts", "coords"])
    single = pd.DataFrame(flat[:4], index=_index("video1", names[:4]), columns=columns)
    single.to_hdf(root / "labeled-data" / "video1" / "CollectedData_rick.h5", key="df_with_missing", mode="w")

    second = flat[4:] + SECOND_MOUSE_SHIFT
    second[SECOND_MOUSE_FRAMES:] = np.nan
    columns = pd.MultiIndex.from_tuples([("rick", animal, part, axis) for animal in ("m1", "m2")
                                         for part in bodyparts for axis in "xy"],
                                        names=["scorer", "individuals", "bodyparts", "coords"])
    multi = pd.DataFrame(np.concatenate([flat[4:], second], axis=1), index=_index("video2", names[4:]),
                         columns=columns)
    multi.to_csv(root / "labeled-data" / "video2" / "CollectedData_rick.csv")

    config = root / "config.yaml"
    config.write_text("Task: mini\nscorer: rick\nmultianimalproject: true\nbodyparts: MULTI!\n"
                      "individuals:\n- m1\n- m2\nmultianimalbodyparts:\n" + "".join(f"- {p}\n" for p in bodyparts)
                      + "uniquebodyparts: []\n")
    return config


def coco_set(root: Path, name: str = "person_keypoints_mini", images: list[int] | None = None) -> Path:
    """tests/data's COCO sample as ``root/annotations/<name>.json`` with its images in ``root/images/``,
    keeping only the images with ids ``images`` (default: all); returns the annotation file."""
    data = json.loads((COCO / "test_coco.json").read_text())
    if images is not None:
        data["images"] = [image for image in data["images"] if image["id"] in images]
        data["annotations"] = [a for a in data["annotations"] if a["image_id"] in images]
    (root / "images").mkdir(parents=True, exist_ok=True)
    for image in data["images"]:
        shutil.copy(COCO / image["file_name"], root / "images" / image["file_name"])
    path = root / "annotations" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def train_val_pair(root: Path) -> tuple[Path, Path]:
    """The mini table cut into ``train.csv`` (frames 1-6) and ``val.csv`` (frames 7-8), both beside a copy of
    its ``labeled-data/`` folder, as lightning-pose keeps them."""
    lines = MOUSE_MINI.read_text().splitlines()
    _images(root / "labeled-data", [f"img0{number}.png" for number in range(1, 9)])
    train, val = root / "train.csv", root / "val.csv"
    train.write_text("\n".join(lines[:3] + lines[3:9]) + "\n")
    val.write_text("\n".join(lines[:3] + lines[9:]) + "\n")
    return train, val


DLC_BAD_INPUTS = ("project without label files", "individual with no labels", "h5 that is not a DeepLabCut table",
                  "file that is not HDF5")


def dlc_bad_inputs(tmp_path: Path) -> dict[str, tuple]:
    """DLC_BAD_INPUTS built under ``tmp_path``: name -> (file to load, file the message must name, text the
    message must contain)."""
    empty = tmp_path / "empty"
    (empty / "labeled-data" / "video1").mkdir(parents=True)
    (empty / "config.yaml").write_text("Task: empty\nbodyparts:\n- nose\n")
    dlc_project(tmp_path / "ghost")
    multi = tmp_path / "ghost" / "labeled-data" / "video2" / "CollectedData_rick.csv"
    lines = multi.read_text().splitlines()
    owners = lines[1].split(",")
    lines[1] = ",".join(owners[:3] + ["m3" if owner == "m2" else owner for owner in owners[3:]])
    rows = [line.split(",") for line in lines[4:]]
    for row in rows:  # m3 is m2's columns, emptied in every frame
        row[3 + len(owners[3:]) // 2:] = [""] * (len(owners[3:]) // 2)
    multi.write_text("\n".join(lines[:4] + [",".join(row) for row in rows]) + "\n")
    plain = tmp_path / "plain.h5"
    pd.DataFrame({"a": [1.0]}).to_hdf(plain, key="df", mode="w")
    not_hdf = tmp_path / "text.h5"
    not_hdf.write_text("not HDF5\n")
    return {
        "project without label files": (empty / "config.yaml", "config.yaml", "no CollectedData_*.h5 or .csv"),
        "individual with no labels": (multi, "CollectedData_rick.csv", "individual 'm3' has no labelled keypoint"),
        "h5 that is not a DeepLabCut table": (plain, "plain.h5", "not a DeepLabCut label table"),
        "file that is not HDF5": (not_hdf, "text.h5", "not a DeepLabCut label table"),
    }
