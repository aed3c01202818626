"""The codec floor: how precisely each representation can round-trip a keypoint, before any training.

``decode(ideal_outputs(k))`` is what a network that learned its targets perfectly would predict, so its error
is a floor under every trained model's error. ``floor_rows`` measures it for random sub-pixel keypoints, per
representation x variant x input resolution x region, and ``write_floor_table`` writes the table that
``python -m heatbench floor`` produces.

Regions (ours): a keypoint is *interior* when it is at least ``interior_margin_px(side)`` from both edges on
each axis, and *border* otherwise (still inside the image, [0, W) x [0, H)). The margin is
max(12 px, side / 8): 12 px is three cells of the default stride-4 heatmap, the room the DARK decoders'
stencils and the HRNet quarter offset's border rule need; side / 8 keeps the default 256x192 heatmap's
Gaussian (sigma = 2 cells, DARK blur of 11 cells) clear of the map edge. A person box fills the central 80 %
of a 1.25x-padded top-down crop, so most of it is interior and the border band holds its edges and the
context. ``floor_tolerance_px`` of every representation is stated for this interior; ``floor_error`` is the
interior mean of one configured representation (the ``run`` table's floor column).

Every variant sees the same keypoints (one scrambled Sobol sequence per resolution and region), so rows
compare directly. Errors are Euclidean, in canonical input pixels; bias is the mean signed error (decoded - true) per axis.
"""
from __future__ import annotations

import csv
import itertools
import math
import typing
from pathlib import Path

import torch
from tabulate import tabulate

from . import registry, results
from .coords import interior_margin_px
from .representation import Representation, build_representation

COLUMNS = ("representation", "variant", "res", "region", "n", "mean_px", "p95_px", "max_px", "bias_x_px",
           "bias_y_px")
REGIONS = ("interior", "border")
_INSTANCES_PER_CALL = 16  # bounds the memory of dense decoders (a 256x192 map per keypoint); speed is flat


def sample_keypoints(input_size: tuple[int, int], count: int, region: str, seed: int) -> torch.Tensor:
    """(count, 2) (x, y) canonical keypoints spread uniformly over ``region`` ("interior" or "border") of an
    (H, W) input: a scrambled Sobol sequence, random but evenly spread, so that a mean over the sub-pixel
    phase (the bias of a quantising decoder) converges like 1/n instead of 1/sqrt(n)."""
    if region not in REGIONS:
        raise ValueError(f"region must be one of {', '.join(REGIONS)}, got {region!r}")
    height, width = input_size
    size = torch.tensor([width, height], dtype=torch.float32)
    margin = torch.tensor([interior_margin_px(width), interior_margin_px(height)])
    sobol = torch.quasirandom.SobolEngine(dimension=2, scramble=True, seed=seed)
    if region == "interior":
        return margin + sobol.draw(count) * (size - 2 * margin)
    # The border band is uniform over its area: draw over the image and keep what is not interior.
    kept = torch.empty(0, 2)
    while len(kept) < count:
        points = sobol.draw(2 * count) * size
        interior = ((points >= margin) & (points <= size - margin)).all(dim=-1)
        kept = torch.cat((kept, points[~interior]))
    return kept[:count]


def variants(cls: type[Representation]) -> list[dict]:
    """Every combination of the values of ``cls.floor_variants`` fields (Literal or bool), as override dicts."""
    names = cls.floor_variants
    hints = typing.get_type_hints(cls.config_class)
    choices = []
    for name in names:
        hint = hints.get(name)
        if hint is bool:
            choices.append((False, True))
        elif typing.get_origin(hint) is typing.Literal:
            choices.append(typing.get_args(hint))
        else:
            raise TypeError(f"{cls.__name__}.floor_variants names {name!r}, which is not a Literal or bool field "
                            f"of {cls.config_class.__name__}")
    return [dict(zip(names, values)) for values in itertools.product(*choices)]


def variant_label(overrides: dict) -> str:
    """"encoding=msra,decoder=argmax", or "default" for no overrides."""
    return ",".join(f"{name}={value}" for name, value in overrides.items()) or "default"


def res_label(input_size: tuple[int, int]) -> str:
    height, width = input_size
    return f"{height}x{width}"


@torch.no_grad()
def _decode_ideal(representation: Representation, keypoints: torch.Tensor) -> torch.Tensor:
    """(B, K, 2) keypoints -> (B, K, 2) decode(ideal_outputs(keypoints)), a few instances per call."""
    decoded = []
    for chunk in keypoints.split(_INSTANCES_PER_CALL):
        visible = torch.ones(chunk.shape[:2])
        decoded.append(representation.decode(representation.ideal_outputs(chunk, visible))[0])
    return torch.cat(decoded)


def _keypoint_batch(input_size: tuple[int, int], n: int, num_keypoints: int, region: str, seed: int
                    ) -> torch.Tensor:
    """(ceil(n / K), K, 2) keypoints, the first n of which are measured."""
    batch = math.ceil(n / num_keypoints)
    return sample_keypoints(input_size, batch * num_keypoints, region, seed).view(batch, num_keypoints, 2)


def _errors(representation: Representation, keypoints: torch.Tensor, n: int) -> torch.Tensor:
    """(n, 2) signed errors decoded - true, canonical px."""
    return (_decode_ideal(representation, keypoints) - keypoints).view(-1, 2)[:n]


def floor_error(representation: Representation, n: int = 500, seed: int = 0) -> float:
    """Mean Euclidean floor error of this configured representation over n interior keypoints, input px."""
    keypoints = _keypoint_batch(representation.input_size, n, representation.num_keypoints, "interior", seed)
    return _errors(representation, keypoints, n).norm(dim=-1).mean().item()


def floor_rows(names: list[str], resolutions: list[tuple[int, int]], n: int = 2000, seed: int = 0,
               num_keypoints: int = 17) -> list[dict]:
    """One row per representation x variant x resolution (H, W) x region, with the columns of ``COLUMNS``."""
    rows = []
    for name in names:
        cls = registry.get(name)
        for overrides, input_size, region in itertools.product(variants(cls), resolutions, REGIONS):
            representation = build_representation(name, input_size, num_keypoints, **overrides)
            keypoints = _keypoint_batch(input_size, n, num_keypoints, region, seed)
            errors = _errors(representation, keypoints, n)
            distance = errors.norm(dim=-1)
            rows.append({
                "representation": name, "variant": variant_label(overrides), "res": res_label(input_size),
                "region": region, "n": n, "mean_px": distance.mean().item(),
                "p95_px": torch.quantile(distance, 0.95).item(), "max_px": distance.max().item(),
                "bias_x_px": errors[:, 0].mean().item(), "bias_y_px": errors[:, 1].mean().item(),
            })
    return rows


_PREAMBLE = """\
# Codec floor: error of decode(ideal_outputs(k)), canonical input px

Random sub-pixel keypoints (the same ones for every row of a resolution and region). Interior: at least
max(12 px, side / 8) from every edge; border: the rest of the image. Mean, 95th percentile and maximum of the
Euclidean error; bias is the mean signed error (decoded - true) per axis. No training involved.

"""


def write_floor_table(rows: list[dict], out_dir: Path) -> str:
    """Write ``table.md`` (with the command that made it), ``table.csv`` and ``table.json`` into ``out_dir``,
    all or nothing (``results.atomic_directory``). Returns the Markdown table.
    """
    origin = results.provenance(torch.device("cpu"))
    preface = _PREAMBLE + f"Made by `{origin['command']}` at commit {origin['git_commit']}.\n\n"
    table = tabulate([[results.format_cell(row, column) for column in COLUMNS] for row in rows], headers=COLUMNS,
                     tablefmt="github", disable_numparse=True)
    with results.atomic_directory(Path(out_dir)) as staging:
        with open(staging / "table.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows({column: row[column] for column in COLUMNS} for row in rows)
        results.write_json(staging / "table.json", {**origin, "rows": rows})
        (staging / "table.md").write_text(preface + table + "\n")
    return table
