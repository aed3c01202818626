"""The cost table: what each representation costs to train and to run, side by side (``heatbench profile``).

``profile_rows`` measures every representation x input resolution on one device with :mod:`heatbench.cost`,
the functions the ``run`` table uses too, on the model that ``run`` trains (``train.build_model``: the shared
ResNet backbone and neck plus the representation's head, with random weights, since no cost here depends on
them). ``write_profile_table`` writes ``table.md``, ``table.csv`` and ``table.json``, all or nothing.

Columns. "Per image" means the figure for one batch divided by its size B; heatbench/cost.py says exactly
what is counted and timed.

- ``representation``; ``input`` and ``output``: the input and the decoded grid, both (H x W).
- ``head_params``, ``total_params``: parameters of the head alone and of backbone + head.
- ``train_gflops``: GFLOPs (1e9 FLOPs) per image of encode + forward + loss (the backward is not counted).
- ``inference_gflops``: GFLOPs per image of ``decode(model(images))`` with the configured decoding.
- for each batch size B: ``inference_ms_b{B}`` (median ms per image), ``inference_ms_spread_b{B}`` (its
  interquartile range, ms per image), ``inference_images_per_s_b{B}`` (B / median batch time) and
  ``inference_peak_mib_b{B}`` (peak memory of one batch above the level before it, MiB: CUDA peak allocated,
  or on CPU peak resident memory, a lower bound).
- ``train_batch`` (the largest B), ``train_step_ms`` and ``train_step_ms_spread`` (median and IQR of one
  step: encode, forward, loss, backward, Adam, ms per batch), ``train_images_per_s`` and ``train_peak_mib``.
- ``train_step_vs_heatmap``: ``train_step_ms`` over the plain heatmap's at the same input, measured in the
  same run (empty when ``heatmap`` was not profiled); ``train_cost_note``: where that ratio is over
  ``HEATMAP_STEP_RATIO``, the representation's ``train_cost_note``, why its step costs more.
- for each of the representation's ``decoding_variants`` v (NerPE: progressive beside the configured
  standard decoding), the same model's outputs decoded by v: ``inference_gflops_{v}``,
  ``inference_ms_b{B}_{v}`` and ``inference_ms_spread_b{B}_{v}``; none for the other representations.
- ``backbone_depth``, ``warmup``, ``repeats``, ``train_repeats``: how the row was measured (csv and json);
  ``batches``, ``decodings`` and the resolved representation ``config``: json only.

Defaults (ours): 1 untimed warm-up call, then 3 timed calls for inference (a median that one slow run does
not move) and 2 for the training step (the fewest that give a spread), so that the table stays affordable
on a 2-core CPU, where one ResNet-18 training step on 32 images of 256x192 takes tens of seconds and
NerPE's standard decoding about 70 GFLOPs per image. Raise them on a quiet machine or a GPU for tighter
spreads.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from . import cost, results
from .errors import HeatbenchError
from .models.pose_model import PoseModel
from .representation import Representation, build_representation
from .parsing import size_name
from .train import TrainConfig, build_model

log = logging.getLogger(__name__)

MIB = 2**20
# A training step more than this many times the plain heatmap's says why in its row (the bar).
HEATMAP_STEP_RATIO = 1.5


def _model(representation: Representation, backbone_depth: int) -> PoseModel:
    torch.manual_seed(cost.SEED)  # no cost depends on the weights, but data-dependent decoders see the same maps
    return build_model(representation, TrainConfig(backbone_depth=backbone_depth))


def _inference(representation: Representation, model: PoseModel, device: torch.device, batches: list[int],
               warmup: int, repeats: int) -> dict[int, dict]:
    """batch -> :func:`cost.measure_inference`'s result."""
    return {batch: cost.measure_inference(representation, model, representation.input_size, device, batch,
                                          warmup, repeats)
            for batch in batches}


def _latency_columns(measured: dict[int, dict], suffix: str = "") -> dict:
    """GFLOPs per image (the same at every batch) and median / IQR ms per image at each batch."""
    columns = {f"inference_gflops{suffix}": next(iter(measured.values()))["gflops_per_image"]}
    for batch, result in measured.items():
        columns[f"inference_ms_b{batch}{suffix}"] = result["latency_ms_per_image"]
        columns[f"inference_ms_spread_b{batch}{suffix}"] = result["latency_spread_ms_per_image"]
    return columns


def _row(representation: Representation, device: torch.device, batches: list[int], backbone_depth: int,
         warmup: int, repeats: int, train_repeats: int) -> dict:
    name, size = representation.name, representation.input_size
    model = _model(representation, backbone_depth)
    row = {"representation": name, "input": size_name(size), "output": size_name(representation.output_size()),
           **cost.parameter_counts(model)}
    measured = _inference(representation, model, device, batches, warmup, repeats)
    row |= _latency_columns(measured)
    for batch, result in measured.items():
        row[f"inference_images_per_s_b{batch}"] = result["throughput_images_per_s"]
        row[f"inference_peak_mib_b{batch}"] = result["peak_memory_bytes"] / MIB
    variants = representation.decoding_variants()
    for value, variant in variants.items():
        row |= _latency_columns(_inference(variant, model, device, batches, warmup, repeats), f"_{value}")
    # after the inference measurements: the training step trains the model it is given
    train = cost.measure_train_step(representation, model, size, device, max(batches), warmup, train_repeats)
    row |= {"train_gflops": train["train_gflops_per_image"], "train_batch": train["batch"],
            "train_step_ms": train["step_time_s"] * 1e3, "train_step_ms_spread": train["step_time_spread_s"] * 1e3,
            "train_images_per_s": train["train_images_per_s"], "train_peak_mib": train["peak_memory_bytes"] / MIB}
    return row | {"backbone_depth": backbone_depth, "warmup": warmup, "repeats": repeats,
                  "train_repeats": train_repeats, "batches": list(batches), "decodings": list(variants),
                  "config": representation.resolved_config()}


def _compare_with_heatmap(rows: list[dict], representations: list[Representation]) -> None:
    """Set each row's ``train_step_vs_heatmap`` and, where that ratio is over HEATMAP_STEP_RATIO, its
    ``train_cost_note`` (a slower step whose representation states no reason says so)."""
    heatmap_step_ms = {row["input"]: row["train_step_ms"] for row in rows if row["representation"] == "heatmap"}
    for row, representation in zip(rows, representations, strict=True):
        baseline = heatmap_step_ms.get(row["input"])
        ratio = None if baseline is None else row["train_step_ms"] / baseline
        slower = ratio is not None and ratio > HEATMAP_STEP_RATIO
        row["train_step_vs_heatmap"] = ratio
        row["train_cost_note"] = (representation.train_cost_note or "none stated by the representation"
                                  if slower else "")


def profile_rows(names: list[str], resolutions: list[tuple[int, int]], device: torch.device, batches: list[int],
                 num_keypoints: int = 17, backbone_depth: int = 18, warmup: int = 1, repeats: int = 3,
                 train_repeats: int = 2) -> list[dict]:
    """One row per representation x (H, W) resolution, in the order given (columns: the module docstring).

    Every representation is built before the first measurement, so a bad name or config fails at once.
    """
    batches = list(batches)
    if not names or not resolutions or not batches:
        raise HeatbenchError("profile: name at least one representation, one resolution and one batch size")
    if any(not isinstance(batch, int) or batch < 1 for batch in batches) or len(set(batches)) != len(batches):
        raise HeatbenchError(f"--batch {batches}: batch sizes must be distinct positive integers")
    if warmup < 0 or repeats < 2 or train_repeats < 2:
        raise HeatbenchError(f"warmup={warmup}, repeats={repeats}, train_repeats={train_repeats}: warm-up must be "
                             ">= 0 and repeats >= 2 (a spread needs two timed runs)")
    representations = [build_representation(name, size, num_keypoints) for size in resolutions for name in names]
    device = torch.device(device)
    rows = []
    for representation in representations:
        started = time.perf_counter()
        rows.append(_row(representation, device, batches, backbone_depth, warmup, repeats, train_repeats))
        log.info("profiled %s at %s in %.1f s", representation.name, size_name(representation.input_size),
                 time.perf_counter() - started)
    _compare_with_heatmap(rows, representations)
    return rows


def _headers(rows: list[dict]) -> dict[str, str]:
    """Column key -> title of table.md (titles are unique): every cost, without the measurement settings."""
    batches = rows[0]["batches"]
    headers = {"representation": "representation", "input": "input (HxW)", "output": "output (HxW)",
               "head_params": "head params", "total_params": "total params", "train_gflops": "train GFLOPs/img",
               "inference_gflops": "infer GFLOPs/img"}
    for batch in batches:
        headers |= {f"inference_ms_b{batch}": f"infer ms/img B={batch}", f"inference_ms_spread_b{batch}": f"IQR B={batch}",
                    f"inference_images_per_s_b{batch}": f"img/s B={batch}",
                    f"inference_peak_mib_b{batch}": f"peak MiB B={batch}"}
    headers |= {"train_images_per_s": f"train img/s B={rows[0]['train_batch']}", "train_step_ms": "train step ms",
                "train_step_ms_spread": "step IQR", "train_peak_mib": "train peak MiB",
                "train_step_vs_heatmap": "train step / heatmap's"}
    for value in dict.fromkeys(value for row in rows for value in row["decodings"]):
        headers[f"inference_gflops_{value}"] = f"infer GFLOPs/img ({value})"
        for batch in batches:
            headers[f"inference_ms_b{batch}_{value}"] = f"infer ms/img B={batch} ({value})"
    return headers | {"train_cost_note": "why the train step costs more"}  # last: a sentence


def write_profile_table(rows: list[dict], out_dir: Path, device: torch.device) -> str:
    """Write ``table.md`` (a preface naming the command, device, torch version and commit, then the costs),
    ``table.csv`` (every scalar column) and ``table.json`` (rows and provenance) into ``out_dir``, all or
    nothing. Returns the Markdown table."""
    device = torch.device(device)
    record = {**results.provenance(device), "rows": rows}
    first = rows[0]
    memory = ("CUDA peak allocated" if device.type == "cuda"
              else f"peak resident memory sampled every {cost.RSS_SAMPLE_INTERVAL_S * 1e3:g} ms, a lower bound")
    preface = (
        f"# Cost per representation\n\nMade by `{record['command']}` at commit {record['git_commit']} on "
        f"{record['device']}, torch {torch.__version__}. Model: ResNet-{first['backbone_depth']} backbone and "
        f"neck + each head, random weights, synthetic inputs, default configs. "
        f"GFLOPs per image from torch.utils.flop_counter (training: encode + forward + loss; inference: forward + "
        f"decode). Inference: median ms per image over {first['repeats']} timed batches after "
        f"{first['warmup']} warm-up, with its interquartile range; img/s = B / median batch time; peak memory "
        f"above the level before the call ({memory}). Training: one step (forward, loss, backward, Adam) at "
        f"B={first['train_batch']}, median of {first['train_repeats']}, and its ratio to the heatmap's at the same "
        f"input, with the representation's reason where it is over {HEATMAP_STEP_RATIO}x (the last column; "
        f"decoding variants before it). Every column and its unit: heatbench/profile.py; table.csv has them "
        f"all.\n\n")
    with results.atomic_directory(Path(out_dir)) as staging:
        results.write_json(staging / "table.json", record)
        markdown = results.write_table(staging, rows, _headers(rows), preface=preface)
    return markdown
