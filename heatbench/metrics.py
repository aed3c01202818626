"""Accuracy metrics on predictions in original-image canonical coordinates.

Every metric averages over *labelled* ground-truth keypoints (visible = 1) of the evaluated instances:
- mean error, in input pixels (the crop the network sees) and in original-image pixels;
- PCK@t: fraction of labelled keypoints within t x the instance's box size, box size = max(box w, box h) in
  image pixels (ours: top-down benchmarks without head boxes commonly normalise by the box);
- PCKh@0.5 and @0.1 (threshold 0.1 exactly) where the data set has head boxes; head size = 0.6 x the head
  box diagonal, the MPII evaluation convention;
- OKS AP/AR through pycocotools' COCOeval with the data set's sigmas (``KeypointDataset.sigma_note`` says
  which); predictions are exported with ``canonical_to_pixel_centre`` like the ground truth.
"""
from __future__ import annotations

import contextlib
import io

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from .coords import canonical_to_pixel_centre

PCK_THRESHOLDS = (0.05, 0.1, 0.2)


def _masked_mean(values: np.ndarray, mask: np.ndarray, axis: int | None = None) -> float | np.ndarray:
    """The mean of ``values`` where ``mask``, over everything or along ``axis`` (NaN where nothing is masked in)."""
    count, total = mask.sum(axis=axis), (values * mask).sum(axis=axis)
    if axis is None:
        return float(total / count) if count else float("nan")
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def keypoint_errors(predicted: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(N, K) Euclidean distances between (N, K, 2) predictions and targets; NaN targets give NaN."""
    return np.linalg.norm(predicted - target, axis=-1)


def mean_error(predicted: np.ndarray, target: np.ndarray, visible: np.ndarray) -> float:
    """Mean Euclidean error over labelled keypoints of (N, K, 2) predictions, in the targets' units."""
    return _masked_mean(np.nan_to_num(keypoint_errors(predicted, target)), visible > 0)


def merged_pairs(predicted: np.ndarray, target: np.ndarray, visible: np.ndarray, pairs: list[tuple[int, int]],
                 spacing: float) -> float:
    """Share of the left/right ``pairs`` labelled on both sides whose two (N, K, 2) predictions lie closer than
    ``spacing`` x the targets' distance: a model that cannot tell the sides apart puts both at one point."""
    first, second = np.array(pairs).T
    labelled = (visible[:, first] > 0) & (visible[:, second] > 0)
    predicted_gap = np.linalg.norm(predicted[:, first] - predicted[:, second], axis=-1)
    target_gap = np.linalg.norm(target[:, first] - target[:, second], axis=-1)
    return _masked_mean(predicted_gap < spacing * target_gap, labelled & (target_gap > 0))


def decoding_agreement(first: np.ndarray, second: np.ndarray, step_xy: tuple[float, float],
                       visible: np.ndarray) -> float:
    """Fraction of labelled keypoints where two decodings of the same outputs, (N, K, 2) input px, lie within
    one grid step of each other on each axis; ``step_xy`` = the input px between neighbouring grid points."""
    step = np.asarray(step_xy, dtype=np.float64) * (1 + 1e-6)  # a neighbouring grid point, not rounding, differs
    close = (np.abs(first - second) <= step).all(axis=-1)
    return _masked_mean(close.astype(np.float64), visible > 0)


def pck(errors: np.ndarray, visible: np.ndarray, norm: np.ndarray, threshold: float,
        axis: int | None = None) -> float | np.ndarray:
    """Fraction of labelled keypoints with error < threshold x norm; errors/visible (N, K), norm (N,); over
    every keypoint, or with ``axis=0`` per keypoint."""
    hits = np.nan_to_num(errors) < threshold * norm[:, None]
    return _masked_mean(hits.astype(np.float64), visible > 0, axis)


def keypoint_similarity(errors: np.ndarray, areas: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """(N, K) per-keypoint OKS terms exp(-d^2 / (2 s^2 (2 sigma)^2)), s^2 the instance area, as COCOeval's
    ``computeOks`` sums them; errors (N, K) in image px."""
    variances = (2 * np.asarray(sigmas, dtype=np.float64)) ** 2
    return np.exp(-np.nan_to_num(errors) ** 2 / variances / (areas[:, None] + np.spacing(1)) / 2)


def coco_results(dataset, keypoints: np.ndarray, scores: np.ndarray) -> list[dict]:
    """COCO keypoint results for (N, K, 2) image-coordinate predictions of the N instances of ``dataset``:
    ``image_id``, ``category_id``, ``keypoints`` as flat 0-based pixel-centre ``[x, y, v, ...]`` (v = 1: COCOeval
    reads only x and y) and ``score``, the mean keypoint score (see ``oks_ap``), ready for ``COCO.loadRes``."""
    exported = canonical_to_pixel_centre(keypoints)
    flags = np.ones((*exported.shape[:2], 1))
    return [{"image_id": int(image_id), "category_id": dataset.category_id,
             "keypoints": np.concatenate([points, flag], axis=1).reshape(-1).tolist(), "score": float(np.mean(score))}
            for image_id, points, flag, score in zip(dataset.image_ids, exported, flags, scores)]


def oks_ap(dataset, keypoints: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """OKS AP and AR of (N, K, 2) image-coordinate predictions for the N instances of ``dataset``.

    Instance score = mean keypoint score (ours; top-down pipelines usually also multiply a detector score,
    and heatbench crops from ground-truth boxes, so there is none).
    """
    images, annotations = [], []
    exported_gt = canonical_to_pixel_centre(np.nan_to_num(dataset.keypoints))
    for image_id in np.unique(dataset.image_ids):
        images.append({"id": int(image_id)})
    for index in range(len(dataset)):
        flags = np.where(dataset.visible[index] > 0, 2, 0)
        gt = np.concatenate([exported_gt[index] * (flags[:, None] > 0), flags[:, None]], axis=1)
        x, y, w, h = (float(v) for v in dataset.boxes[index])
        annotations.append({
            "id": index + 1, "image_id": int(dataset.image_ids[index]), "category_id": dataset.category_id,
            "iscrowd": 0,
            "keypoints": gt.reshape(-1).tolist(), "num_keypoints": int((flags > 0).sum()),
            "area": float(dataset.areas[index]), "bbox": [x - 0.5, y - 0.5, w, h],
        })
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        ground_truth = COCO()
        ground_truth.dataset = {"images": images, "annotations": annotations,
                                "categories": [{"id": dataset.category_id, "name": "instance",
                                                "keypoints": list(dataset.keypoint_names), "skeleton": []}]}
        ground_truth.createIndex()
        evaluation = COCOeval(ground_truth, ground_truth.loadRes(coco_results(dataset, keypoints, scores)),
                              iouType="keypoints")
        evaluation.params.kpt_oks_sigmas = np.asarray(dataset.sigmas, dtype=np.float64)
        evaluation.params.useSegm = None
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return {"AP": float(evaluation.stats[0]), "AP50": float(evaluation.stats[1]), "AR": float(evaluation.stats[5])}


def evaluate_predictions(dataset, pred_image: np.ndarray, pred_input: np.ndarray, target_input: np.ndarray,
                         scores: np.ndarray) -> dict[str, float]:
    """All metrics for the N instances of ``dataset``.

    pred_image (N, K, 2) image coordinates; pred_input and target_input (N, K, 2) input-crop coordinates;
    scores (N, K). Returns a flat dict of named metrics (units in the names).
    """
    visible = dataset.visible > 0
    image_errors = keypoint_errors(pred_image, dataset.keypoints)
    box_size = dataset.boxes[:, 2:].max(axis=1)
    metrics = {
        "mean_error_input_px": mean_error(pred_input, target_input, visible),
        "mean_error_image_px": _masked_mean(np.nan_to_num(image_errors), visible),
    }
    for threshold in PCK_THRESHOLDS:
        metrics[f"pck@{threshold:g}"] = pck(image_errors, dataset.visible, box_size, threshold)
    if dataset.head_boxes is not None:
        head_size = 0.6 * np.linalg.norm(dataset.head_boxes[:, 2:], axis=1)
        metrics["pckh@0.5"] = pck(image_errors, dataset.visible, head_size, 0.5)
        metrics["pckh@0.1"] = pck(image_errors, dataset.visible, head_size, 0.1)
    metrics.update(oks_ap(dataset, pred_image, scores))
    return metrics


def per_keypoint_metrics(dataset, pred_image: np.ndarray, pred_input: np.ndarray,
                         target_input: np.ndarray) -> list[dict]:
    """Per keypoint of ``dataset``, over the instances where it is labelled: how many, the mean error in
    input and in image px, PCK@0.1 and the mean OKS term (``keypoint_similarity``). Arrays as in
    ``evaluate_predictions``."""
    visible = dataset.visible > 0
    image_errors = keypoint_errors(pred_image, dataset.keypoints)
    columns = {
        "mean_error_input_px": _masked_mean(np.nan_to_num(keypoint_errors(pred_input, target_input)), visible, 0),
        "mean_error_image_px": _masked_mean(np.nan_to_num(image_errors), visible, 0),
        "pck@0.1": pck(image_errors, dataset.visible, dataset.boxes[:, 2:].max(axis=1), 0.1, axis=0),
        "oks": _masked_mean(keypoint_similarity(image_errors, dataset.areas, dataset.sigmas), visible, 0),
    }
    return [{"keypoint": name, "labelled": int(visible[:, k].sum()),
             **{key: float(values[k]) for key, values in columns.items()}}
            for k, name in enumerate(dataset.keypoint_names)]
