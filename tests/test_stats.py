"""The paired bootstrap finds known differences, finds none where there is none, and resamples whole images."""
import numpy as np
import pytest

from heatbench.stats import paired_bootstrap

N, K = 120, 10


def _errors(rng, n=N, k=K):
    return rng.gamma(shape=2.0, scale=1.5, size=(n, k))  # positive, skewed, like keypoint errors in px


def _everything_visible(n=N, k=K):
    return np.ones((n, k)), np.arange(n)


def test_interval_contains_a_known_half_pixel_advantage_and_excludes_zero():
    rng = np.random.default_rng(0)
    a = _errors(rng)
    b = a + 0.5 + rng.normal(0.0, 0.3, size=a.shape)  # A is better by 0.5 px on average
    result = paired_bootstrap(a, b, *_everything_visible())
    assert result["ci_low"] <= -0.5 <= result["ci_high"]
    assert result["ci_high"] < 0 and result["significant"]
    assert result["mean_diff"] == pytest.approx(a.mean() - b.mean(), abs=1e-12)
    assert result["n_keypoints"] == N * K and result["n_images"] == N


def test_interval_contains_zero_for_identically_distributed_errors():
    rng = np.random.default_rng(1)
    result = paired_bootstrap(_errors(rng), _errors(rng), *_everything_visible())
    assert result["ci_low"] < 0 < result["ci_high"] and not result["significant"]


def test_identical_errors_give_a_zero_width_interval_and_no_difference():
    a = _errors(np.random.default_rng(2))
    result = paired_bootstrap(a, a.copy(), *_everything_visible())
    assert (result["mean_diff"], result["ci_low"], result["ci_high"]) == (0.0, 0.0, 0.0)
    assert not result["significant"]


def test_interval_covers_the_true_difference_about_95_percent_of_the_time():
    # 200 independent experiments with true difference -0.3 px; the percentile interval of a mean over 60
    # images should cover it in ~95% of them. Coverage of 200 Bernoulli(0.95) trials has sd 1.5%, and the
    # percentile bootstrap undercovers slightly at this size, so [0.89, 0.99] is about 4 sd below, 3 above.
    rng = np.random.default_rng(3)
    covered = []
    for trial in range(200):
        a = _errors(rng, n=60)
        b = a + 0.3 + rng.normal(0.0, 1.0, size=a.shape)
        result = paired_bootstrap(a, b, *_everything_visible(n=60), n_boot=500, seed=trial)
        covered.append(result["ci_low"] <= -0.3 <= result["ci_high"])
    assert 0.89 <= np.mean(covered) <= 0.99


def test_interval_is_wider_than_a_keypoint_bootstrap_when_errors_are_correlated_within_images():
    # Each image shifts all its keypoints' difference together (sd 1) with little keypoint noise (sd 0.1):
    # only N independent draws exist, not N*K, so the honest interval is ~sqrt(K) = 3.2 times wider than one
    # that treats keypoints as independent. Asserting > 2x leaves room for bootstrap noise.
    rng = np.random.default_rng(4)
    a = _errors(rng)
    b = a + rng.normal(0.0, 1.0, size=(N, 1)) + rng.normal(0.0, 0.1, size=(N, K))
    by_image = paired_bootstrap(a, b, *_everything_visible())
    by_keypoint = paired_bootstrap(a.reshape(-1, 1), b.reshape(-1, 1), *_everything_visible(n=N * K, k=1))
    assert by_image["mean_diff"] == pytest.approx(by_keypoint["mean_diff"], abs=1e-12)
    width = lambda r: r["ci_high"] - r["ci_low"]  # noqa: E731
    assert width(by_image) > 2 * width(by_keypoint)


def test_duplicating_every_keypoint_within_its_image_leaves_the_interval_unchanged():
    # A copy of each keypoint adds no information; resampled by image, sums and counts both double and every
    # bootstrap ratio stays the same, so the interval is identical (up to float rounding), not narrower.
    rng = np.random.default_rng(5)
    a, b = _errors(rng), _errors(rng)
    once = paired_bootstrap(a, b, *_everything_visible())
    twice = paired_bootstrap(np.tile(a, 2), np.tile(b, 2), *_everything_visible(k=2 * K))
    for key in ("mean_diff", "ci_low", "ci_high"):
        assert twice[key] == pytest.approx(once[key], abs=1e-12)


def test_instances_of_one_image_are_resampled_together():
    # Splitting each image's keypoints over two instances with the same image id is the same experiment.
    rng = np.random.default_rng(6)
    a, b = _errors(rng), _errors(rng)
    whole = paired_bootstrap(a, b, *_everything_visible())
    half = K // 2
    split = paired_bootstrap(a.reshape(2 * N, half), b.reshape(2 * N, half), np.ones((2 * N, half)),
                             np.repeat(np.arange(N), 2))
    for key in ("mean_diff", "ci_low", "ci_high"):
        assert split[key] == pytest.approx(whole[key], abs=1e-12)


def test_unlabelled_and_nan_keypoints_are_ignored():
    rng = np.random.default_rng(7)
    a, b = _errors(rng), _errors(rng)
    visible, image_ids = _everything_visible()
    visible[rng.random((N, K)) < 0.3] = 0
    a_noisy, b_noisy = a.copy(), b.copy()
    a_noisy[visible == 0] = np.nan
    b_noisy[visible == 0] = 1e6
    clean = paired_bootstrap(np.where(visible > 0, a, 0.0), np.where(visible > 0, b, 0.0), visible, image_ids)
    noisy = paired_bootstrap(a_noisy, b_noisy, visible, image_ids)
    assert noisy == clean
    assert noisy["n_keypoints"] == int(visible.sum())


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="same"):
        paired_bootstrap(np.zeros((3, 2)), np.zeros((3, 1)), np.ones((3, 2)), np.arange(3))
