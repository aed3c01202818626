"""Start-up of a COCO-format data set at scale: 50,000 person annotations on 20,000 images.

``load_coco_json`` parses the JSON, indexes the annotations once and checks that every image file exists
(one stat per distinct image); it opens no image. The generated images are empty files, so a loader that
decoded pixels at start-up would fail here. Three benchmarks split the start-up: the whole load, the JSON
parse alone, and the image-existence check alone (``resolve_images``, as the loader calls it).

The file: seeded, COCO's 17 keypoint names, integer coordinates in a 640x480 image, about 30 % of keypoints
unlabelled (v = 0, coordinates 0, as COCO writes them), a box and area per annotation, no crowd regions.

    python -m pytest benchmarks/test_data_scale.py --benchmark-enable -p no:cacheprovider
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from heatbench.data import load_coco_json
from heatbench.data.coco import COCO_NAMES
from heatbench.data.dataset import read_json, resolve_images

ANNOTATIONS, IMAGES, ROUNDS = 50_000, 20_000, 3
IMAGE_WIDTH, IMAGE_HEIGHT = 640, 480


@pytest.fixture(scope="module")
def coco_file(tmp_path_factory):
    """(path of the JSON, image folder holding IMAGES empty files) in a temporary folder."""
    folder = tmp_path_factory.mktemp("coco_at_scale")
    image_root = folder / "images"
    image_root.mkdir()
    file_names = [f"{index:012d}.jpg" for index in range(IMAGES)]
    for file_name in file_names:
        (image_root / file_name).touch()
    rng = np.random.default_rng(0)
    count = len(COCO_NAMES)
    xy = rng.integers(0, [IMAGE_WIDTH, IMAGE_HEIGHT], size=(ANNOTATIONS, count, 2))
    v = rng.choice([0, 1, 2], p=[0.3, 0.2, 0.5], size=(ANNOTATIONS, count, 1))
    flat = np.concatenate([xy * (v > 0), v], axis=-1).reshape(ANNOTATIONS, 3 * count)
    corner = rng.integers(0, [IMAGE_WIDTH // 2, IMAGE_HEIGHT // 2], size=(ANNOTATIONS, 2))
    size = rng.integers(16, [IMAGE_WIDTH // 2, IMAGE_HEIGHT // 2], size=(ANNOTATIONS, 2))
    image_ids = rng.integers(0, IMAGES, size=ANNOTATIONS)
    data = {
        "images": [{"id": index, "file_name": name, "width": IMAGE_WIDTH, "height": IMAGE_HEIGHT}
                   for index, name in enumerate(file_names)],
        "annotations": [{"id": index, "image_id": int(image_id), "category_id": 1, "iscrowd": 0,
                         "keypoints": keypoints, "num_keypoints": int((row[2::3] > 0).sum()),
                         "bbox": [*box_corner, *box_size], "area": float(box_size[0] * box_size[1])}
                        for index, (image_id, keypoints, row, box_corner, box_size)
                        in enumerate(zip(image_ids, flat.tolist(), flat, corner.tolist(), size.tolist()))],
        "categories": [{"id": 1, "name": "person", "supercategory": "person", "keypoints": list(COCO_NAMES)}],
    }
    path = folder / "person_keypoints_50k.json"
    path.write_text(json.dumps(data))
    return path, image_root


def test_load_coco_json_50k_annotations(benchmark, coco_file):
    path, image_root = coco_file
    benchmark.extra_info.update(annotations=ANNOTATIONS, images=IMAGES, json_mib=path.stat().st_size / 2**20)
    dataset = benchmark.pedantic(load_coco_json, args=(path, image_root), rounds=ROUNDS, iterations=1)
    # every annotation has a labelled keypoint but with probability 1 - 0.3^17, so none is dropped
    assert len(dataset) == ANNOTATIONS and len(set(dataset.image_paths)) <= IMAGES


def test_parse_json_50k_annotations(benchmark, coco_file):
    path, _ = coco_file
    data = benchmark.pedantic(read_json, args=(path,), rounds=ROUNDS, iterations=1)
    assert len(data["annotations"]) == ANNOTATIONS


def test_check_images_exist_50k_annotations(benchmark, coco_file):
    path, image_root = coco_file
    names = [f"{image_id:012d}.jpg" for image_id in
             (annotation["image_id"] for annotation in read_json(path)["annotations"])]
    benchmark.extra_info.update(paths=len(names), distinct=len(set(names)))
    paths = benchmark.pedantic(resolve_images, args=(path, names, image_root), rounds=ROUNDS, iterations=1)
    assert len(paths) == ANNOTATIONS
