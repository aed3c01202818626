"""Codec speed of every other built-in representation: batched tensor encode / decode against a per-keypoint
NumPy version of the same algorithm (issue 7: >= 50x for B = 256, K = 17 on CPU, every representation).

``test_codec_speed.py`` measures ``heatmap``; this module measures ``offset``, ``softargmax``, ``simcc``,
``sahr``, ``hdm`` and ``nerpe``, each in its default configuration at 64x64, 128x128 and 256x192 (SimCC's
defaults change with the input: one-hot labels at the first two, Gaussian ones at 256x192), on B = 256 x
K = 17 keypoints drawn uniformly in the input, all labelled. ``test_encode`` compares every field of the
targets; ``test_decode`` compares keypoints and scores decoded from the ideal outputs plus uniform noise in
[0, 0.01) on every output tensor (a trained network's), except NerPE's ideal output, an analytic field that
is decoded as it is.

Each reference is written from its module's docstring and reads only sizes and parameters from the
representation (its config, input and output sizes), none of its code: a Python loop over instances and
keypoints (and over the two axes where a representation treats them apart) with NumPy doing one keypoint's
arithmetic, in float32 as the batched code. ``sahr`` draws and decodes its maps as ``heatmap`` does, so its
reference is built from the same pieces (``speed.py``). NerPE draws its training queries from torch's global
RNG: its reference draws the same numbers, instance by instance, under the same seed, and lays the queries
out over the sub-cells itself. Not referenced: NerPE decoding a learned field, which is its head's MLP
(``test_nerpe_decoding.py`` times that); here its decode runs on the ideal field, the analytic Gaussian. Every
benchmark first checks that both give the same answer (the tolerances and their reasons are in
``REFERENCES``), so the reference is an independent check of the batched code too.

pytest-benchmark times the batched code; the reference is timed here (best of a few runs) and
``speedup_vs_numpy`` = reference / batched goes to ``extra_info`` and is printed, beside ``speedup_ceiling`` =
reference / one pass: one write of every target tensor (encode), one read of the output tensors that decode
reads whole (decode; for NerPE, of its dense query map). No pass/fail on timing.

    python -m pytest benchmarks/test_representation_codec_speed.py -q --benchmark-enable -p no:cacheprovider -s
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import numpy as np
import pytest
import torch
from scipy.ndimage import convolve1d

from benchmarks.speed import (BATCH, KEYPOINTS, RES, decode_heatmap, draw_gaussian, opencv_gaussian_kernel, report,
                              uniform_keypoints)
from heatbench import available_representations, build_representation, registry
from heatbench.representation import map_tensors
from heatbench.representations.nerpe import KeypointField


# --- the per-keypoint NumPy references -------------------------------------------------------------------


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over every entry of ``logits``."""
    exponentials = np.exp(logits - logits.max())
    return exponentials / exponentials.sum()


def peak_neighbourhood(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The cells of the 3 x 3 block around the argmax of an (h, w) map that lie on the map: their values,
    column indices and row indices."""
    height, width = probs.shape
    y, x = divmod(int(np.argmax(probs)), width)
    columns, rows = np.arange(max(x - 1, 0), min(x + 2, width)), np.arange(max(y - 1, 0), min(y + 2, height))
    return probs[rows[0]:rows[-1] + 1, columns[0]:columns[-1] + 1], columns, rows


def decoded_arrays(batch_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Zero (B, K, 2) keypoints and (B, K) scores for a reference decode to fill."""
    return np.zeros((*batch_shape, 2), dtype=np.float32), np.zeros(batch_shape, dtype=np.float32)


def udp_grid(representation) -> tuple[np.ndarray, np.float32]:
    """Offset's UDP grid, u = (x - 1/2)(w - 1)/(W - 1) per axis: the (x, y) scale and the offset unit
    r = radius_factor max(w, h) in cells."""
    height, width = representation.input_size
    map_height, map_width = representation.output_size()
    scale = np.array([(map_width - 1) / (width - 1), (map_height - 1) / (height - 1)], dtype=np.float32)
    return scale, np.float32(representation.config.radius_factor * max(map_width, map_height))


def offset_encode(representation, keypoints: np.ndarray) -> dict[str, np.ndarray]:
    """``udp_combined``: dense offsets (u - i) / r from every cell to the keypoint; the disk of cells within r
    of it is both the class map and the offset mask; weight 0 where the disk holds no cell."""
    scale, radius = udp_grid(representation)
    map_height, map_width = representation.output_size()
    columns, rows = np.arange(map_width, dtype=np.float32), np.arange(map_height, dtype=np.float32)
    batch, joints = keypoints.shape[:2]
    targets = {"heatmaps": np.zeros((batch, joints, map_height, map_width), dtype=np.float32),
               "offsets": np.zeros((batch, joints, 2, map_height, map_width), dtype=np.float32),
               "mask": np.zeros((batch, joints, map_height, map_width), dtype=np.float32),
               "weight": np.zeros((batch, joints), dtype=np.float32)}
    for b, k in np.ndindex(batch, joints):
        u = (keypoints[b, k] - np.float32(0.5)) * scale
        offsets = targets["offsets"][b, k]
        offsets[0] = (u[0] - columns) / radius
        offsets[1] = ((u[1] - rows) / radius)[:, None]
        disk = offsets[0] ** 2 + offsets[1] ** 2 <= 1
        if disk.any():
            targets["heatmaps"][b, k] = targets["mask"][b, k] = disk
            targets["weight"][b, k] = 1
    return targets


def offset_decode(representation, outputs) -> tuple[np.ndarray, np.ndarray]:
    """``udp_combined``: blur the class map with 2 blur_kernel + 1 taps of OpenCV's std and a reflect-101
    border (scipy's "mirror"), add r times the offset read at the blurred map's argmax, whose maximum is the
    score."""
    scale, radius = udp_grid(representation)
    kernel = opencv_gaussian_kernel(2 * representation.config.blur_kernel + 1)
    heatmaps, offsets = outputs.heatmaps.numpy(), outputs.offsets.numpy()
    coords, scores = decoded_arrays(heatmaps.shape[:2])
    for b, k in np.ndindex(heatmaps.shape[:2]):
        blurred = convolve1d(convolve1d(heatmaps[b, k], kernel, axis=1, mode="mirror"), kernel, axis=0, mode="mirror")
        y, x = divmod(int(np.argmax(blurred)), blurred.shape[1])
        scores[b, k] = blurred[y, x]
        coords[b, k] = (np.array([x, y], dtype=np.float32) + radius * offsets[b, k, :, y, x]) / scale + np.float32(0.5)
    return coords, scores


def keypoint_encode(representation, keypoints: np.ndarray) -> dict[str, np.ndarray]:
    """``softargmax`` and ``hdm``: the keypoints themselves, weight 1 inside the closed input [0, W] x [0, H]."""
    height, width = representation.input_size
    targets = {"keypoints": np.zeros_like(keypoints), "weight": np.zeros(keypoints.shape[:2], dtype=np.float32)}
    for b, k in np.ndindex(keypoints.shape[:2]):
        x, y = keypoints[b, k]
        targets["keypoints"][b, k] = x, y
        targets["weight"][b, k] = 0 <= x <= width and 0 <= y <= height
    return targets


def softargmax_decode(representation, logits: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """``ipr``: the expectation of p = softmax(beta z) over the map's cell centres (i + 1/2) s; the score is
    the mass of p in the 3 x 3 cells around its argmax."""
    beta, stride = representation.config.softmax_beta, representation.config.stride
    logits = logits.numpy()
    height, width = logits.shape[-2:]
    centres_x, centres_y = np.arange(width, dtype=np.float32) + 0.5, np.arange(height, dtype=np.float32) + 0.5
    coords, scores = decoded_arrays(logits.shape[:2])
    for b, k in np.ndindex(logits.shape[:2]):
        probs = softmax(beta * logits[b, k])
        coords[b, k] = np.array([probs.sum(axis=0) @ centres_x, probs.sum(axis=1) @ centres_y]) * stride
        scores[b, k] = peak_neighbourhood(probs)[0].sum()
    return coords, scores


def simcc_encode(representation, keypoints: np.ndarray) -> dict[str, np.ndarray]:
    """Per axis, on the bin coordinate mu = x k of N bins (bin i centred at i + 1/2): one-hot, 1 - eps at bin
    floor(mu) (clamped to the bins) and eps / (N - 1) elsewhere, on the bins where 0 <= mu < N; or Gaussian,
    exp(-((i + 1/2) - mu)^2 / 2 sigma^2) / (sigma sqrt(2 pi)), on the bins where [mu - 3 sigma, mu + 3 sigma]
    meets [0, N]. Weight: on the bins on both axes."""
    config = representation.config
    split_ratio, sigma, epsilon = np.float32(config.split_ratio), config.sigma, config.label_smoothing
    bins_y, bins_x = representation.output_size()
    centres = [np.arange(bins, dtype=np.float32) + 0.5 for bins in (bins_x, bins_y)]
    batch, joints = keypoints.shape[:2]
    targets = {"x": np.zeros((batch, joints, bins_x), dtype=np.float32),
               "y": np.zeros((batch, joints, bins_y), dtype=np.float32),
               "weight": np.zeros((batch, joints), dtype=np.float32)}
    for b, k in np.ndindex(batch, joints):
        on_bins = True
        for axis, label in enumerate((targets["x"][b, k], targets["y"][b, k])):
            mu, bins = keypoints[b, k, axis] * split_ratio, len(label)
            if config.label == "gaussian":
                label[:] = np.exp(-((centres[axis] - mu) ** 2) / (2 * sigma**2)) / (sigma * math.sqrt(2 * math.pi))
                on_bins &= bool(mu + 3 * sigma >= 0 and mu - 3 * sigma <= bins)
            else:
                label[:] = epsilon / (bins - 1)
                label[min(max(int(np.floor(mu)), 0), bins - 1)] = 1 - epsilon
                on_bins &= bool(0 <= mu < bins)
        targets["weight"][b, k] = on_bins
    return targets


def simcc_decode(representation, outputs) -> tuple[np.ndarray, np.ndarray]:
    """Per axis, the argmax bin i of softmax(logits), x = (i + 1/2) / k; the score is the smaller of the two
    maxima (``use_dark`` is off by default)."""
    split_ratio = np.float32(representation.config.split_ratio)
    logits = (outputs.x_logits.numpy(), outputs.y_logits.numpy())
    coords, scores = decoded_arrays(logits[0].shape[:2])
    for b, k in np.ndindex(scores.shape):
        maxima = []
        for axis, axis_logits in enumerate(logits):
            probs = softmax(axis_logits[b, k])
            index = int(np.argmax(probs))
            coords[b, k, axis] = (index + 0.5) / split_ratio
            maxima.append(probs[index])
        scores[b, k] = min(maxima)
    return coords, scores


def sahr_encode(representation, keypoints: np.ndarray) -> dict[str, np.ndarray]:
    """On the grid u = x / s - 1/2: the heatmap reference's Gaussian of sigma_0 cells, at round(u) on its 3 sigma
    window (``msra``) or at u on the whole map (``unbiased``); the window is the support S; weight 0 where it
    misses the map."""
    config = representation.config
    msra = config.encoding == "msra"
    batch, joints = keypoints.shape[:2]
    map_shape = (batch, joints, *representation.output_size())
    targets = {"heatmaps": np.zeros(map_shape, dtype=np.float32), "support": np.zeros(map_shape, dtype=np.float32),
               "weight": np.zeros((batch, joints), dtype=np.float32)}
    for b, k in np.ndindex(batch, joints):
        u = keypoints[b, k] / np.float32(config.stride) - np.float32(0.5)
        centre = np.floor(u + 0.5) if msra else u
        window = draw_gaussian(targets["heatmaps"][b, k], centre, centre, config.sigma, truncate=msra)
        if window is not None:
            targets["support"][b, k][window] = 1
            targets["weight"][b, k] = 1
    return targets


def sahr_decode(representation, outputs) -> tuple[np.ndarray, np.ndarray]:
    """The heatmap reference's decoder (DARK by default, blurred from sigma_0) on the heatmaps, alpha discarded;
    x = (u + 1/2) s."""
    config = representation.config
    maps = outputs.heatmaps.numpy()
    coords, scores = decoded_arrays(maps.shape[:2])
    for b, k in np.ndindex(maps.shape[:2]):
        position, scores[b, k] = decode_heatmap(maps[b, k], config.decoder, config.sigma)
        coords[b, k] = (position + 0.5) * config.stride
    return coords, scores


def hdm_decode(representation, maps: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """``local_mean``: p = softplus(z) over its sum (or the softmax of z), the mean cell of p over the 3 x 3 cells
    around its argmax that lie on the map, x = (i + 1/2) s; the score is their mass."""
    stride = representation.config.stride
    maps = maps.numpy()
    coords, scores = decoded_arrays(maps.shape[:2])
    for b, k in np.ndindex(maps.shape[:2]):
        if representation.config.normalisation == "softmax":
            probs = softmax(maps[b, k])
        else:
            mass = np.logaddexp(0, maps[b, k])
            probs = mass / mass.sum()
        patch, columns, rows = peak_neighbourhood(probs)
        mass = patch.sum()
        coords[b, k] = (np.array([patch.sum(axis=0) @ columns, patch.sum(axis=1) @ rows]) / mass + 0.5) * stride
        scores[b, k] = mass
    return coords, scores


def nerpe_frame(representation) -> tuple[np.ndarray, np.float32]:
    """NerPE's normalised frame, n = ((x, y) - (W, H) / 2) / (max(W, H) / 2): the centre and the half long side."""
    height, width = representation.input_size
    return np.array([width / 2, height / 2], dtype=np.float32), np.float32(max(height, width) / 2)


def nerpe_encode(representation, keypoints: np.ndarray) -> dict[str, np.ndarray]:
    """``uniform`` sampling: one query in each of the S x S sub-cells of every cell of the grid (``cells`` on
    the long side, which spans [-1, 1]), sub-cells in row-major order; the Gaussian target
    exp(-|q - n|^2 / 2 sigma^2) of the normalised keypoint n at each query; every labelled keypoint regressed."""
    config = representation.config
    height, width = representation.input_size
    centre, half_long = nerpe_frame(representation)
    cells_y, cells_x = config.cells * height // max(height, width), config.cells * width // max(height, width)
    divisions = config.samples_per_axis
    rows, columns = np.meshgrid(np.arange(cells_y * divisions, dtype=np.float32),
                                np.arange(cells_x * divisions, dtype=np.float32), indexing="ij")
    corners = np.stack([columns, rows], axis=-1).reshape(-1, 2)  # sub-cell units
    sub_cell = np.float32(2 / (config.cells * divisions))
    grid_corner = np.array([cells_x, cells_y], dtype=np.float32) / np.float32(config.cells)
    batch, joints = keypoints.shape[:2]
    targets = {"queries": np.zeros((batch, len(corners), 2), dtype=np.float32),
               "values": np.zeros((batch, joints, len(corners)), dtype=np.float32),
               "weights": np.ones((batch, joints), dtype=np.float32)}
    for b in range(batch):
        # torch's global RNG, which the batched code draws from: under one seed both sample the same points
        jitter = torch.rand(corners.shape).numpy()
        queries = targets["queries"][b] = (corners + jitter) * sub_cell - grid_corner
        for k in range(joints):
            offset = queries - (keypoints[b, k] - centre) / half_long
            targets["values"][b, k] = np.exp(-(offset[:, 0] ** 2 + offset[:, 1] ** 2) / (2 * config.sigma**2))
    return targets


def nerpe_decode(representation, field) -> tuple[np.ndarray, np.ndarray]:
    """``standard`` decoding of the ideal field, the Gaussian of std ``field.width`` around its normalised
    keypoints times their weight: its values at the centres of the (n_h U) x (n_w U) query grid over the input,
    the argmax cell's centre in canonical px and the maximum."""
    height, width = representation.input_size
    map_height, map_width = representation.output_size()
    centre, half_long = nerpe_frame(representation)
    xs = ((np.arange(map_width, dtype=np.float32) + 0.5) * np.float32(width / map_width) - centre[0]) / half_long
    ys = ((np.arange(map_height, dtype=np.float32) + 0.5) * np.float32(height / map_height) - centre[1]) / half_long
    keypoints, weight = field.keypoints.numpy(), field.weight.numpy()
    coords, scores = decoded_arrays(weight.shape)
    for b, k in np.ndindex(weight.shape):
        dx, dy = xs - keypoints[b, k, 0], ys - keypoints[b, k, 1]
        values = np.exp(-(dy[:, None] ** 2 + dx ** 2) / (2 * field.width**2)) * weight[b, k]
        row, column = divmod(int(np.argmax(values)), map_width)
        coords[b, k] = (column + 0.5) * width / map_width, (row + 0.5) * height / map_height
        scores[b, k] = values[row, column]
    return coords, scores


class Reference(NamedTuple):
    """A representation's per-keypoint NumPy codec, how closely the batched one must agree with it, and what
    one pass of its decode reads."""
    encode: Callable[[Any, np.ndarray], dict[str, np.ndarray]]  # (repr, (B, K, 2) keypoints) -> targets' fields
    encode_atol: dict[str, float]  # per targets field; 0: equal
    decode: Callable[[Any, Any], tuple[np.ndarray, np.ndarray]]  # (repr, outputs) -> keypoints, scores
    decode_atol: tuple[float, float]  # keypoints (input px), scores
    decode_reads: Callable[[Any, Any], list[torch.Tensor]]  # (repr, outputs) -> the tensors decode reads whole


# float32 exp of the same argument by torch and by NumPy, each within an ulp of the true value: within two
# ulp of each other, 1.2e-7 at values up to 1.
EXP_ULPS = 2.5e-7
# A few float32 ulp of a coordinate below 256 px (1.5e-5 px each), left by sums taken in different orders.
COORD_ULPS = 1e-4
# A softmax normalised two ways (torch's fused softmax for HDM and SimCC; here: exp(z - max z) / sum) or
# summed in another order: a few ulp of a probability up to 1, measured up to 5.4e-7.
SOFTMAX_ULPS = 2e-6

REFERENCES = {
    # The same float32 operations in the same order, correctly rounded: equal targets, and equal keypoints
    # once the argmax agrees. The blur (a matrix product against two convolve1d passes) sums in different
    # orders: scores within a few ulp, measured up to 1.8e-7.
    "offset": Reference(
        offset_encode, {"heatmaps": 0, "offsets": 0, "mask": 0, "weight": 0},
        offset_decode, (0, 1e-6),
        lambda representation, outputs: [outputs.heatmaps]),  # the offsets are read at the peak only
    # Keypoints are copied. The expectation sums up to 64 x 48 cells in different orders: measured up to
    # 9.2e-5 px (6 ulp) at 256x192.
    "softargmax": Reference(
        keypoint_encode, {"keypoints": 0, "weight": 0},
        softargmax_decode, (5e-4, SOFTMAX_ULPS),
        lambda representation, logits: [logits]),
    # One-hot labels are equal; Gaussian ones are exps. Decoded keypoints are bin centres, equal once the
    # argmax agrees.
    "simcc": Reference(
        simcc_encode, {"x": EXP_ULPS, "y": EXP_ULPS, "weight": 0},
        simcc_decode, (0, SOFTMAX_ULPS),
        lambda representation, outputs: list(outputs)),
    # The scores are the maps' own maxima.
    "sahr": Reference(
        sahr_encode, {"heatmaps": EXP_ULPS, "support": 0, "weight": 0},
        sahr_decode, (COORD_ULPS, 0),
        lambda representation, outputs: [outputs.heatmaps]),  # alpha is discarded
    "hdm": Reference(
        keypoint_encode, {"keypoints": 0, "weight": 0},
        hdm_decode, (COORD_ULPS, SOFTMAX_ULPS),
        lambda representation, logits: [logits]),
    # The queries are the same float32 operations on the same draws: equal. Decoded keypoints are query-grid
    # centres, equal once the argmax agrees.
    "nerpe": Reference(
        nerpe_encode, {"queries": 0, "values": EXP_ULPS, "weights": 0},
        nerpe_decode, (0, EXP_ULPS),
        # the field holds no map: one read of the dense map it is queried into
        lambda representation, field: [torch.zeros(field.batch_size, representation.num_keypoints,
                                                   *representation.output_size())]),
}


# --- the benchmarks --------------------------------------------------------------------------------------


def with_noise(outputs):
    """Ideal outputs plus a trained network's noise, uniform in [0, 0.01) on every tensor, seeded; a field
    (NerPE's ideal output, the analytic target) is left as it is."""
    if isinstance(outputs, KeypointField):
        return outputs
    generator = torch.Generator().manual_seed(1)
    return map_tensors(lambda tensor: tensor + 0.01 * torch.rand(tensor.shape, generator=generator), outputs)


def check_encoding(representation, keypoints: torch.Tensor, visible: torch.Tensor):
    """The batched encoding equals the reference's, field by field (also run by the default tests at small
    batches); the targets."""
    reference = REFERENCES[representation.name]
    torch.manual_seed(0)  # NerPE's training queries: both sides draw them from torch's global RNG
    targets = representation.encode(keypoints, visible)
    torch.manual_seed(0)
    expected = reference.encode(representation, keypoints.numpy())
    for field in targets._fields:
        np.testing.assert_allclose(getattr(targets, field).numpy(), expected[field], rtol=0,
                                   atol=reference.encode_atol[field], err_msg=field)
    return targets


def check_decoding(representation, outputs) -> None:
    """The batched decoding equals the reference's (also run by the default tests at small batches)."""
    reference = REFERENCES[representation.name]
    coords, scores = reference.decode(representation, outputs)
    decoded, decoded_scores = representation.decode(outputs)
    coords_atol, scores_atol = reference.decode_atol
    np.testing.assert_allclose(decoded.numpy(), coords, rtol=0, atol=coords_atol)
    np.testing.assert_allclose(decoded_scores.numpy(), scores, rtol=0, atol=scores_atol)


def test_every_builtin_representation_has_a_reference():
    builtins = {name for name in available_representations()
                if registry.get(name).__module__.startswith("heatbench.representations.")}
    assert builtins - {"heatmap"} == set(REFERENCES)  # heatmap's reference is test_codec_speed.py's


@RES
@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_encode(benchmark, input_size, name):
    representation, reference = build_representation(name, input_size, KEYPOINTS), REFERENCES[name]
    keypoints, visible = uniform_keypoints(input_size), torch.ones(BATCH, KEYPOINTS)
    targets = check_encoding(representation, keypoints, visible)
    benchmark(representation.encode, keypoints, visible)
    report(benchmark, f"encode {name} {input_size}", lambda: representation.encode(keypoints, visible),
           lambda: reference.encode(representation, keypoints.numpy()),
           lambda: [torch.ones(tensor.shape) for tensor in targets])


@RES
@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_decode(benchmark, input_size, name):
    representation, reference = build_representation(name, input_size, KEYPOINTS), REFERENCES[name]
    outputs = with_noise(representation.ideal_outputs(uniform_keypoints(input_size), torch.ones(BATCH, KEYPOINTS)))
    check_decoding(representation, outputs)
    benchmark(representation.decode, outputs)
    reads = reference.decode_reads(representation, outputs)
    report(benchmark, f"decode {name} {input_size}", lambda: representation.decode(outputs),
           lambda: reference.decode(representation, outputs), lambda: [tensor.amax(dim=-1) for tensor in reads])
