"""Paired comparison of two representations' keypoint errors, with a bootstrap interval over images.

Two representations evaluated on the same instances make paired errors: the difference in mean keypoint error
is far less noisy than either mean, because the hard images are hard for both. The keypoints of one image are
not independent (a blurred or occluded frame spoils all of them together), so the bootstrap resamples *images*
with replacement, each carrying all of its labelled keypoints, and the interval is the 2.5th to 97.5th
percentile of the resampled differences (Efron's percentile interval). The mean is over keypoints, not over
images (ours), so that it is the difference of the table's mean errors. A representation trained with several
seeds enters with its seed-mean error per keypoint (ours): the interval then measures how much the conclusion
depends on which images were evaluated, not how much it would move with another set of training seeds.
"""
from __future__ import annotations

import numpy as np

CONFIDENCE = 0.95


def paired_bootstrap(errors_a: np.ndarray, errors_b: np.ndarray, visible: np.ndarray, image_ids: np.ndarray,
                     n_boot: int = 2000, seed: int = 0) -> dict:
    """Mean keypoint error of A minus that of B, with a 95% percentile bootstrap interval resampling images.

    errors_a, errors_b: (N, K) errors of the same N instances (any unit; the result is in that unit);
    visible: (N, K), keypoints with visible > 0 and both errors finite count; image_ids: (N,), instances
    sharing an id are resampled together. Returns mean_diff, ci_low, ci_high, significant (the interval
    excludes zero), n_keypoints and n_images (those with at least one counted keypoint).
    """
    errors_a, errors_b = np.asarray(errors_a, dtype=np.float64), np.asarray(errors_b, dtype=np.float64)
    if errors_a.shape != errors_b.shape or errors_a.shape != np.shape(visible) or errors_a.ndim != 2:
        raise ValueError(f"errors_a {errors_a.shape}, errors_b {errors_b.shape} and visible {np.shape(visible)} "
                         "must all be the same (N, K)")
    if np.shape(image_ids) != errors_a.shape[:1]:
        raise ValueError(f"image_ids {np.shape(image_ids)} must be ({errors_a.shape[0]},), one per instance")
    counted = (np.asarray(visible) > 0) & np.isfinite(errors_a) & np.isfinite(errors_b)
    difference = np.where(counted, errors_a - errors_b, 0.0)
    _, image_index = np.unique(image_ids, return_inverse=True)
    image_sums = np.bincount(image_index, weights=difference.sum(axis=1))  # (I,)
    image_counts = np.bincount(image_index, weights=counted.sum(axis=1))  # (I,)
    # images without a counted keypoint would only make the resample's size vary
    image_sums, image_counts = image_sums[image_counts > 0], image_counts[image_counts > 0]
    n_images, n_keypoints = len(image_counts), int(image_counts.sum())
    if n_images == 0:
        raise ValueError("no labelled keypoint with finite errors in both A and B to compare")
    draws = np.random.default_rng(seed).integers(0, n_images, size=(n_boot, n_images))  # (n_boot, I)
    resampled = image_sums[draws].sum(axis=1) / image_counts[draws].sum(axis=1)  # (n_boot,)
    tail = 100 * (1 - CONFIDENCE) / 2
    ci_low, ci_high = np.percentile(resampled, [tail, 100 - tail])
    return {"mean_diff": float(image_sums.sum() / n_keypoints), "ci_low": float(ci_low), "ci_high": float(ci_high),
            "significant": bool(ci_low > 0 or ci_high < 0), "n_keypoints": n_keypoints, "n_images": n_images}
