"""Loaders read every sample format into canonical coordinates, and reject bad input with one-line errors."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import shutil

import numpy as np
import pytest

from heatbench.data import KeypointDataset, load_coco_json, load_dataset, load_default, load_dlc_csv, load_mpii_json
from heatbench.data.dataset import box_from_keypoints
from heatbench.errors import DataError, HeatbenchError
from tests.layouts import DLC_BAD_INPUTS, SECOND_MOUSE_FRAMES, SECOND_MOUSE_SHIFT, coco_set, dlc_bad_inputs, dlc_project

DATA = Path(__file__).parent / "data"
SAMPLES = DATA / "mmpose_samples"
MOUSE_MINI = DATA / "mirror_mouse_mini" / "CollectedData.csv"
EMBEDDED = Path(__file__).parents[1] / "heatbench" / "data" / "mirror_mouse"

COCO_PAIRS = [(1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)]  # coco/README.md
COCO_SIGMAS = [.026, .025, .025, .035, .035, .079, .079, .072, .072, .062, .062, .107, .107, .087, .087, .089, .089]


@pytest.mark.parametrize("folder", [SAMPLES, DATA / "mirror_mouse_mini", EMBEDDED], ids=lambda p: p.name)
def test_copied_data_matches_its_checksums(folder):
    lines = (folder / "SHA256SUMS").read_text().splitlines()
    assert lines
    for line in lines:
        digest, name = line.split(maxsplit=1)
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name


def test_coco_keypoints_gain_half_a_pixel_and_unlabelled_instances_are_dropped():
    data = load_coco_json(SAMPLES / "coco" / "test_coco.json")
    assert len(data) == 12  # 14 annotations, 2 with num_keypoints 0 (coco/README.md)
    assert data.name == "test_coco" and data.num_keypoints == 17
    np.testing.assert_array_equal(data.keypoints[0, 0], [367.5, 81.5])  # file: 367, 81 (0-based pixel centre)
    np.testing.assert_allclose(data.boxes[0], [281.29, 45.23, 218.7, 346.68])  # corner moves with the keypoints
    assert data.areas[0] == pytest.approx(27789.11055)
    assert data.image_ids[0] == 785 and data.image_paths[0] == (SAMPLES / "coco" / "000000000785.jpg").absolute()
    assert data.visible.sum() == 164 + 17  # v=2 and v=1 slots count as labelled
    assert np.isnan(data.keypoints[data.visible == 0]).all()
    assert data.flip_pairs == COCO_PAIRS and data.keypoint_names[:3] == ["nose", "left_eye", "right_eye"]
    np.testing.assert_array_equal(data.sigmas, COCO_SIGMAS)
    assert data.head_boxes is None


def test_crowdpose_has_14_keypoints_its_sigmas_and_box_areas():
    data = load_coco_json(SAMPLES / "crowdpose" / "test_crowdpose.json")
    assert len(data) == 4 and data.num_keypoints == 14  # one of 5 annotations has no labelled keypoint
    assert data.visible[0, 0] == 0 and np.isnan(data.keypoints[0, 0]).all()
    np.testing.assert_array_equal(data.keypoints[0, 1], [208.5, 108.5])
    assert data.keypoint_names[12:] == ["head", "neck"]
    assert data.flip_pairs == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (10, 11)]
    np.testing.assert_allclose(data.areas, data.boxes[:, 2] * data.boxes[:, 3])  # no 'area' in CrowdPose
    assert data.sigmas[-1] == 0.079 and "CrowdPose" in data.sigma_note
    assert data.visible.sum() == 30 + 17


def test_aic_names_are_normalised_and_get_aic_sigmas():
    data = load_coco_json(SAMPLES / "aic" / "test_aic.json")
    assert len(data) == 9 and data.keypoint_names[0] == "right_shoulder" and data.keypoint_names[12] == "head_top"
    np.testing.assert_array_equal(data.keypoints[0, 0], [313.5, 201.5])
    assert data.flip_pairs == [(0, 3), (1, 4), (2, 5), (6, 9), (7, 10), (8, 11)]  # aic/README.md
    assert data.sigmas[0] == pytest.approx(0.01388152) and "AI Challenger" in data.sigma_note
    assert data.areas[0] == 213 * 544
    assert data.visible.sum() == 69 + 32


def test_ochuman_reads_as_coco_with_float_coordinates():
    data = load_coco_json(SAMPLES / "ochuman" / "test_ochuman.json")
    assert len(data) == 5 and data.image_ids.tolist() == [1, 2, 2, 3, 3]
    np.testing.assert_allclose(data.keypoints[0, 0], [371.5701271305881 + 0.5, 188.86769422623237 + 0.5])
    np.testing.assert_array_equal(data.sigmas, COCO_SIGMAS)
    assert data.flip_pairs == COCO_PAIRS and data.visible.sum() == 66 + 7


def test_mpii_is_one_based_and_its_box_follows_hrnet():
    data = load_mpii_json(SAMPLES / "mpii" / "test_mpii.json")
    assert len(data) == 5 and data.num_keypoints == 16 and len(np.unique(data.image_ids)) == 5
    record = json.loads((SAMPLES / "mpii" / "test_mpii.json").read_text())[0]
    assert record["image"] == data.image_paths[0].name
    np.testing.assert_array_equal(data.keypoints[0, 0], [804 - 1 + 0.5, 711 - 1 + 0.5])
    side = 200 * record["scale"]  # scale * 200 px is the person height; HRNet moves the centre down 15 * scale
    centre = np.array(record["center"]) - 1 + 0.5 + [0, 15 * record["scale"]]
    np.testing.assert_allclose(data.boxes[0], [*(centre - side / 2), side, side])
    assert data.flip_pairs == [(0, 5), (1, 4), (2, 3), (10, 15), (11, 14), (12, 13)]  # mpii/README.md
    assert data.head_boxes is None  # the sample JSON has no head boxes
    assert data.visible.sum() == 76 and data.sigmas[12] == 0.179


def test_mpii_head_boxes_are_read_when_every_record_has_one(tmp_path):
    records = json.loads((SAMPLES / "mpii" / "test_mpii.json").read_text())
    for number, record in enumerate(records):
        record["headbox"] = [[100 + number, 50], [140 + number, 110]]
    path = tmp_path / "mpii_heads.json"
    path.write_text(json.dumps(records))
    data = load_mpii_json(path, image_root=SAMPLES / "mpii")
    np.testing.assert_array_equal(data.head_boxes[1], [101 - 1 + 0.5, 50 - 1 + 0.5, 40, 60])

    del records[2]["headbox"]
    path.write_text(json.dumps(records))
    with pytest.raises(DataError, match="record 2: 'headbox'"):
        load_mpii_json(path, image_root=SAMPLES / "mpii")


def test_mouse_csv_reads_frames_without_flip_pairs():
    data = load_dlc_csv(MOUSE_MINI)
    assert data.name == "mirror_mouse_mini" and len(data) == 8 and data.num_keypoints == 17
    np.testing.assert_array_equal(data.keypoints[0, 0], [77.25 + 0.5, 36.25 + 0.5])
    assert data.keypoint_names[4] == "tailBase_top" and data.visible[0, 4] == 0  # empty cells in img01
    assert data.flip_pairs is None and "ours" in data.sigma_note
    assert len(np.unique(data.image_ids)) == 8
    labelled = data.keypoints[data.visible > 0].reshape(-1, 2)
    corners = np.repeat(data.boxes[:, None, :2], data.num_keypoints, axis=1)[data.visible > 0]
    assert (labelled > corners).all()  # the keypoint box plus margin contains every labelled keypoint


def test_default_data_is_the_embedded_mirror_mouse_set():
    data = load_dataset("default")
    assert data.name == "mirror_mouse" and len(data) == 90 and data.num_keypoints == 17
    assert data.visible.sum() == 1396  # README: 1396 of 1530 keypoint slots are labelled
    assert all(path.is_file() for path in data.image_paths)
    assert load_default().keypoints.tobytes() == data.keypoints.tobytes()


def test_dlc_csv_with_one_index_column_per_path_part_reads_the_same(tmp_path):
    lines = MOUSE_MINI.read_text().splitlines()
    rewritten = [lines[0].replace("scorer,", "scorer,,", 1), lines[1].replace("bodyparts,", "bodyparts,,", 1),
                 lines[2].replace("coords,", "coords,,", 1)]
    rewritten += [line.replace("labeled-data/", "labeled-data,", 1) for line in lines[3:]]
    path = tmp_path / "CollectedData.csv"
    path.write_text("\n".join(rewritten) + "\n")
    data = load_dlc_csv(path, image_root=MOUSE_MINI.parent)
    reference = load_dlc_csv(MOUSE_MINI)
    assert data.image_paths == reference.image_paths
    np.testing.assert_array_equal(data.keypoints, reference.keypoints)


def test_load_dataset_picks_the_loader_from_the_file():
    assert load_dataset(MOUSE_MINI).keypoint_names[0] == "paw1LH_top"
    assert load_dataset(SAMPLES / "mpii" / "test_mpii.json").num_keypoints == 16
    assert load_dataset(str(SAMPLES / "crowdpose" / "test_crowdpose.json")).num_keypoints == 14
    with pytest.raises(DataError, match="unknown data format"):
        load_dataset(SAMPLES / "README.md")
    with pytest.raises(HeatbenchError, match="image-root"):
        load_dataset("default", image_root=SAMPLES)


def test_dlc_project_reads_every_video_with_names_from_its_config(tmp_path):
    config = dlc_project(tmp_path)
    data = load_dataset(config)
    mouse = load_dlc_csv(MOUSE_MINI)
    assert data.name == "mini" and data.keypoint_names == mouse.keypoint_names and data.image_root == tmp_path
    assert len(data) == 4 + 4 + SECOND_MOUSE_FRAMES and len(np.unique(data.image_ids)) == 8
    assert data.image_names()[0] == "labeled-data/video1/img01.png"  # the .h5's three-level index
    assert data.image_names()[4:6] == ["labeled-data/video2/img05.png"] * 2  # two mice in one frame
    assert data.individuals == ["animal"] * 4 + ["m1", "m2", "m1", "m2", "m1", "m1"]
    np.testing.assert_array_equal(data.keypoints[[0, 1, 2, 3, 4, 6, 8, 9]], mouse.keypoints)
    np.testing.assert_allclose(data.keypoints[5], mouse.keypoints[4] + SECOND_MOUSE_SHIFT)
    np.testing.assert_allclose(data.boxes[5, :2], data.boxes[4, :2] + SECOND_MOUSE_SHIFT)  # each from its own keypoints


def test_one_dlc_table_inside_labeled_data_reads_its_paths_from_the_project_folder(tmp_path):
    dlc_project(tmp_path)
    multi = load_dataset(tmp_path / "labeled-data" / "video2" / "CollectedData_rick.csv")
    assert multi.name == "video2" and len(multi) == 6 and multi.image_root == tmp_path
    assert multi.image_paths[0] == tmp_path / "labeled-data" / "video2" / "img05.png"
    single = load_dataset(tmp_path / "labeled-data" / "video1" / "CollectedData_rick.h5")
    assert single.individuals is None and single.image_root == tmp_path
    np.testing.assert_array_equal(single.keypoints, load_dlc_csv(MOUSE_MINI).keypoints[:4])


def test_project_reads_the_csv_only_where_a_folder_has_no_h5(tmp_path):
    config = dlc_project(tmp_path)
    video1 = tmp_path / "labeled-data" / "video1"
    lines = MOUSE_MINI.read_text().splitlines()  # a CSV the loader must not read: its frames are elsewhere
    (video1 / "CollectedData_rick.csv").write_text("\n".join(lines[:4]).replace("labeled-data/", "elsewhere/"))
    assert len(load_dataset(config)) == 10


def test_coco_images_are_found_in_images_beside_annotations_and_the_folder_is_logged(tmp_path, caplog):
    path = coco_set(tmp_path)
    with caplog.at_level("INFO"):
        data = load_dataset(path)
    assert data.image_root == tmp_path / "images" and data.image_paths[0] == tmp_path / "images" / "000000000785.jpg"
    assert f"images from {tmp_path / 'images'}" in caplog.text
    assert load_dataset(path, image_root=tmp_path / "images").image_paths == data.image_paths


def test_coco_images_found_nowhere_is_an_error_listing_every_folder_tried(tmp_path):
    path = coco_set(tmp_path)
    shutil.rmtree(tmp_path / "images")
    with pytest.raises(DataError) as error:
        load_dataset(path)
    message = str(error.value)
    for folder in (tmp_path / "annotations", tmp_path, tmp_path / "images", tmp_path / "mini",
                   tmp_path / "images" / "mini"):
        assert str(folder) in message
    assert "\n" not in message and "--image-root" in message


@pytest.mark.parametrize("case", DLC_BAD_INPUTS)
def test_bad_dlc_input_raises_a_one_line_data_error_naming_the_file(tmp_path, case):
    path, file_name, text = dlc_bad_inputs(tmp_path)[case]
    with pytest.raises(DataError) as error:
        load_dataset(path)
    message = str(error.value)
    assert "\n" not in message and file_name in message and text in message


def _copy_coco(tmp_path: Path, name: str, edit=None) -> Path:
    data = json.loads((SAMPLES / "coco" / "test_coco.json").read_text())
    if edit is not None:
        edit(data)
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def _bad_inputs(tmp_path: Path) -> dict[str, tuple]:
    """name -> (loader call, file the message must name, text the message must contain)."""
    csv_lines = MOUSE_MINI.read_text().splitlines()
    no_header = tmp_path / "no_header.csv"
    no_header.write_text("\n".join(csv_lines[1:]))
    multi_animal = tmp_path / "multi_animal.csv"
    multi_animal.write_text("\n".join([csv_lines[0], "individuals,m1", *csv_lines[1:]]))
    not_a_number = tmp_path / "not_a_number.csv"
    not_a_number.write_text("\n".join([*csv_lines[:4], csv_lines[4].replace("37.25", "abc", 1)]))
    truncated = tmp_path / "truncated.json"
    truncated.write_text((SAMPLES / "coco" / "test_coco.json").read_text()[:500])
    short = _copy_coco(tmp_path, "short.json", lambda data: data["annotations"][0]["keypoints"].pop())
    mpii_records = json.loads((SAMPLES / "mpii" / "test_mpii.json").read_text())
    del mpii_records[1]["scale"]
    no_scale = tmp_path / "mpii.json"
    no_scale.write_text(json.dumps(mpii_records))
    missing_image = _copy_coco(tmp_path, "elsewhere.json")  # the images stay in tests/data
    detections = SAMPLES / "coco" / "test_coco_det_AP_H_56.json"
    return {
        "missing csv": (lambda: load_dlc_csv(tmp_path / "nope.csv"), "nope.csv", "no such file"),
        "missing json": (lambda: load_dataset(tmp_path / "nope.json"), "nope.json", "no such file"),
        "csv without header rows": (lambda: load_dlc_csv(no_header), "no_header.csv", "row 1 starts with 'bodyparts'"),
        "multi-animal csv with a short individuals row": (lambda: load_dlc_csv(multi_animal), "multi_animal.csv",
                                                          "row 3 (bodyparts)"),
        "csv cell not a number": (lambda: load_dlc_csv(not_a_number, MOUSE_MINI.parent), "not_a_number.csv", "row 5"),
        "malformed json": (lambda: load_dataset(truncated), "truncated.json", "malformed JSON"),
        "detections are not annotations": (lambda: load_dataset(detections), detections.name, "not a COCO keypoints"),
        "short keypoint list": (lambda: load_coco_json(short, SAMPLES / "coco"), "short.json", "annotation id 442619"),
        "mpii record without scale": (lambda: load_mpii_json(no_scale, SAMPLES / "mpii"), "mpii.json", "record 1"),
        "missing image": (lambda: load_coco_json(missing_image), "elsewhere.json", "are not all under any of"),
    }


@pytest.mark.parametrize("case", ["missing csv", "missing json", "csv without header rows",
                                  "multi-animal csv with a short individuals row",
                                  "csv cell not a number", "malformed json", "detections are not annotations",
                                  "short keypoint list", "mpii record without scale", "missing image"])
def test_bad_input_raises_a_one_line_data_error_naming_the_file(tmp_path, case):
    call, file_name, text = _bad_inputs(tmp_path)[case]
    with pytest.raises(DataError) as error:
        call()
    message = str(error.value)
    assert "\n" not in message and file_name in message and text in message


def test_non_finite_coordinates_become_unlabelled(tmp_path):
    lines = MOUSE_MINI.read_text().splitlines()
    first = lines[3].split(",")
    first[1:5] = ["nan", "36.25", "inf", "101.9"]
    path = tmp_path / "CollectedData.csv"
    path.write_text("\n".join([*lines[:3], ",".join(first), *lines[4:]]))
    data = load_dlc_csv(path, image_root=MOUSE_MINI.parent)
    assert data.visible[0, :2].tolist() == [0, 0] and np.isnan(data.keypoints[0, :2]).all()

    def poison(coco):
        coco["annotations"][0]["keypoints"][0] = float("nan")  # a v=2 slot with a NaN x
    coco = load_coco_json(_copy_coco(tmp_path, "poisoned.json", poison), SAMPLES / "coco")
    assert coco.visible[0, 0] == 0 and coco.visible[0, 1] == 1


def test_split_is_deterministic_and_disjoint_by_image():
    data = load_default()
    train, val = data.split(0.2, seed=0)
    again_train, again_val = data.split(0.2, seed=0)
    assert (len(train), len(val)) == (72, 18)
    assert train.image_paths == again_train.image_paths and val.image_paths == again_val.image_paths
    assert set(train.image_paths).isdisjoint(val.image_paths)
    assert len(set(train.image_paths) | set(val.image_paths)) == 90
    assert set(data.split(0.2, seed=1)[1].image_paths) != set(val.image_paths)

    coco = load_coco_json(SAMPLES / "coco" / "test_coco.json")  # 4 images, 12 instances
    coco_train, coco_val = coco.split(0.25, seed=3)
    assert len(np.unique(coco_val.image_ids)) == 1
    assert set(coco_train.image_ids).isdisjoint(coco_val.image_ids) and len(coco_train) + len(coco_val) == 12


def test_split_that_would_leave_a_side_empty_is_an_error():
    single = load_dlc_csv(MOUSE_MINI).subset([0])
    with pytest.raises(DataError, match="cannot be split"):
        single.split()


def test_subset_keeps_metadata_and_rows():
    data = load_mpii_json(SAMPLES / "mpii" / "test_mpii.json")
    part = data.subset([3, 1])
    assert part.image_paths == [data.image_paths[3], data.image_paths[1]]
    np.testing.assert_array_equal(part.keypoints, data.keypoints[[3, 1]])
    assert part.flip_pairs == data.flip_pairs and part.sigma_note == data.sigma_note


def test_inconsistent_shapes_are_rejected():
    data = load_dlc_csv(MOUSE_MINI)
    with pytest.raises(ValueError, match="areas"):
        KeypointDataset(**{**data.__dict__, "areas": data.areas[:-1]})
    with pytest.raises(ValueError, match="flip pairs"):
        KeypointDataset(**{**data.__dict__, "flip_pairs": [(0, 17)]})


def test_box_from_keypoints_adds_five_percent_of_the_larger_side_and_at_least_a_pixel():
    keypoints = np.array([[[10.0, 20.0], [110.0, 60.0], [np.nan, np.nan]], [[5.0, 5.0], [0.0, 0.0], [0.0, 0.0]]])
    visible = np.array([[1, 1, 0], [1, 0, 0]])
    np.testing.assert_allclose(box_from_keypoints(keypoints, visible), [[5, 15, 110, 50], [4, 4, 2, 2]])
