"""The main job: train and evaluate representations x resolutions x seeds, and write one comparison table.

Everything that can be checked is checked before the first epoch (names, configs, sizes, data), and the
results directory appears only when every run has finished (``results.atomic_directory``).
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from . import floor, results
from .errors import HeatbenchError
from .exports import FOLDER as PREDICTION_FOLDER, prediction_files
from .parsing import parse_resolutions, parse_shard, size_name
from .report import made_by, write_report
from .representation import Representation, build_representation
from .splits import SplitSpec, load_split
from .train import (MEAN_POSE, MEAN_POSE_KEY, TrainConfig, describe, estimate_step_seconds, init_distributed,
                    mean_pose, resolve_device, run_one, steps_per_epoch, training_dtype)

log = logging.getLogger(__name__)

# table key -> column title in table.md; table.csv keeps every key
TABLE_COLUMNS = {
    "representation": "representation",
    "input": "input (HxW)",
    "output": "output (HxW)",
    "or_ir": "OR/IR",
    "head_params": "head params",
    "total_params": "total params",
    "inference_gflops": "GFLOPs/img",
    "train_steps": "train steps",
    "train_seconds": "train s",
    "inference_ms": "infer ms/img",
    "mean_error_input_px": "mean err (input px)",
    "vs_mean_pose": "vs mean pose",
    "train_vs_mean_pose": "train vs mean pose",
    "last_fifth_change": "val change, last fifth",
    "pck@0.1": "PCK@0.1",
    "AP": "AP",
    "floor_px": "floor (input px)",
}


def table_columns(rows: list[dict]) -> dict[str, str]:
    """TABLE_COLUMNS, with each decoding variant's GFLOPs, agreement and error after the main GFLOPs column."""
    variants = dict.fromkeys(name for row in rows for name in row.get("decoding_variants", []))
    columns = {}
    for key, title in TABLE_COLUMNS.items():
        columns[key] = title
        if key == "inference_gflops":
            for name in variants:
                columns.update({f"{name}_gflops": f"GFLOPs/img ({name} decoding)",
                                f"{name}_agreement": f"{name} = main (1 step)",
                                f"{name}_mean_error_input_px": f"{name} err (input px)"})
    return columns


@dataclass
class RunSpec:
    representations: list[str]
    resolutions: list[tuple[int, int]]
    data: str = "default"
    image_root: str | None = None
    split: SplitSpec = field(default_factory=SplitSpec)
    seeds: int = 1
    first_seed: int = 0
    device: str = "auto"
    out: Path = Path("results")
    name: str | None = None
    overrides: dict[str, dict] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    steps: int | None = None  # at least this many optimizer steps: sets train.epochs from the training set's size
    checkpoint_dir: Path = Path("checkpoints")
    resume: bool = False
    progress: bool = True

    def run_name(self) -> str:
        return self.name or f"{'-'.join(self.representations)}_{'-'.join(map(size_name, self.resolutions))}"


def representation_columns(name: str, representation: Representation, floor_px: float) -> dict:
    """A row's first columns: the representation, its input and output sizes, OR/IR and its floor error."""
    (height, width), (out_h, out_w) = representation.input_size, representation.output_size()
    return {"representation": name, "input": size_name((height, width)), "output": f"{out_h}x{out_w}",
            "or_ir": out_w / width, "floor_px": floor_px}


def _aggregate(rows: list[dict]) -> dict:
    """One table row from the per-seed rows: numbers become their mean, with ``<key>_std`` beside those that
    differ between seeds (not beside parameter counts, GFLOPs or floors, which every seed shares)."""
    merged = dict(rows[0])
    for key, value in rows[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "seed":
            values = np.array([row[key] for row in rows], dtype=np.float64)
            if np.allclose(values, values[0], rtol=1e-9, atol=0):
                merged[key] = float(values[0])
            else:
                merged[key] = float(values.mean())
                merged[f"{key}_std"] = float(values.std(ddof=1))
    merged["seeds"] = [row["seed"] for row in rows]
    del merged["seed"]
    return merged


LAST_FIFTH = 0.8  # the last fifth of training starts at this share of its optimizer steps


def last_fifth_change(curve: list[dict], steps: int) -> float | None:
    """The relative change of the validation error over the last fifth of training, last point over first
    among the learning-curve points from 4/5 of ``steps`` on, minus 1 (negative: still falling); None with
    fewer than two such points."""
    errors = [point["mean_error_input_px"] for point in curve if point["step"] >= LAST_FIFTH * steps]
    return errors[-1] / errors[0] - 1 if len(errors) >= 2 and errors[0] > 0 else None


def table_rows(seed_rows: list[dict]) -> list[dict]:
    """Aggregate per-seed rows into one row per representation x input, in first-seen order; each seed's
    ``last_fifth_change`` is derived from its learning curve first."""
    seed_rows = [{**row, "last_fifth_change": last_fifth_change(row["curve"], row["train_steps"])}
                 if "curve" in row else row for row in seed_rows]
    groups = dict.fromkeys((row["representation"], row["input"]) for row in seed_rows)
    return [_aggregate([row for row in seed_rows if (row["representation"], row["input"]) == group])
            for group in groups]


def with_baselines(rows: list[dict], baselines: list[dict]) -> list[dict]:
    """The table: per input size, its mean-pose row first, then the representations' rows; every row with
    ``vs_mean_pose``, its mean error over the mean-pose error at its input size, and ``train_vs_mean_pose``,
    the same ratio on the training frames (whether it fits what it was trained on; None where a run from
    before that measurement lacks it)."""
    reference = {row["input"]: row["mean_error_input_px"] for row in baselines}
    train_reference = {row["input"]: row.get("train_mean_error_input_px") for row in baselines}
    sizes = sorted({row["input"] for row in rows + baselines}, key=lambda name: math.prod(parse_resolutions(name)[0]))
    table = []
    for size in sizes:
        for row in [row for row in baselines if row["input"] == size] + [row for row in rows if row["input"] == size]:
            ratio = row["mean_error_input_px"] / reference[size] if size in reference else None
            fit, train_bar = row.get("train_mean_error_input_px"), train_reference.get(size)
            table.append({**row, "vs_mean_pose": ratio,
                          "train_vs_mean_pose": fit / train_bar if fit is not None and train_bar else None})
    return table


def curve_rows(seed_rows: list[dict]) -> list[dict]:
    """One row per validation during training: representation, input, seed, epoch, step, loss and metrics."""
    return [{"representation": row["representation"], "input": row["input"], "seed": row["seed"], **point}
            for row in seed_rows for point in row.get("curve", [])]


def per_keypoint_rows(rows: list[dict]) -> list[dict]:
    """per_keypoint.csv: per representation, input and keypoint, the ``per_keypoint`` metrics of ``rows``
    (per-seed and mean-pose rows) averaged over seeds, in first-seen order; rows from before that
    measurement have none."""
    entries = [{"representation": row["representation"], "input": row["input"], **entry}
               for row in rows for entry in row.get("per_keypoint", [])]
    if not entries:
        return []
    frame = pd.DataFrame(entries).groupby(["representation", "input", "keypoint"], sort=False).mean()
    return frame.reset_index().to_dict("records")


def without_per_keypoint(rows: list[dict]) -> list[dict]:
    """Table rows without their per-keypoint lists, which per_keypoint.csv holds averaged over seeds."""
    return [{key: value for key, value in row.items() if key != "per_keypoint"} for row in rows]


def write_files(directory: Path, files: dict[str, str]) -> None:
    """Write ``files`` (path relative to ``directory`` -> text), making their folders."""
    for relative, text in files.items():
        (directory / relative).parent.mkdir(parents=True, exist_ok=True)
        (directory / relative).write_text(text)


def settings_notes(record: dict, seed_rows: list[dict]) -> str:
    """The table's notes on what each trained representation x input size ran with: its resolved config (the
    defaults for that size, with any ``--set``), since several defaults change with the input size."""
    trained = dict.fromkeys(f"{row['representation']}@{row['input']}" for row in seed_rows)
    configs = {key: record["representations"][key]["config"] for key in trained}
    lines = [f"- {key}: " + ", ".join(f"{name}={value}" for name, value in config.items())
             for key, config in configs.items()]
    return "Settings:\n\n" + "\n".join(lines) + "\n\n" if lines else ""


def write_run(target: Path, record: dict, seed_rows: list[dict], arrays: dict[str, np.ndarray],
              baseline_arrays: dict[str, np.ndarray], files: dict[str, str]) -> str:
    """Write a complete run directory atomically (results.json, predictions.npz, baselines.npz, table.md,
    table.csv, per_keypoint.csv, curves.csv and ``files``, the prediction files), then its report (report.md
    and figures).

    ``record`` holds everything but the rows (its ``baselines`` are the mean-pose rows); ``arrays`` the
    validation targets and every trained model's predictions, ``baseline_arrays`` the mean pose's, kept in a
    file of their own so that every prediction in predictions.npz is a trained one. Shared by ``run`` and
    ``merge``. Returns the Markdown table.
    """
    rows = without_per_keypoint(with_baselines(table_rows(seed_rows), record.get("baselines", [])))
    per_keypoint = per_keypoint_rows(record.get("baselines", []) + seed_rows)
    record = {**record, "rows": rows, "seed_rows": seed_rows, "per_keypoint": per_keypoint}
    seeds = sorted({row["seed"] for row in seed_rows})
    preface = (f"# {record['run']}\n\n{made_by(record)} Data: {record['data']['name']}, "
               f"{record['data']['train_instances']} train / "
               f"{record['data']['val_instances']} val instances; errors over labelled keypoints; PCK relative "
               f"to the box size; seeds {seeds}, mean ± sample std.\n\n" + settings_notes(record, seed_rows))
    with results.atomic_directory(target) as staging:
        results.write_json(staging / "results.json", record)
        np.savez_compressed(staging / results.PREDICTIONS, **arrays)
        np.savez_compressed(staging / results.BASELINE_PREDICTIONS, **baseline_arrays)
        markdown = results.write_table(staging, rows, table_columns(rows), preface=preface)
        pd.DataFrame(per_keypoint).to_csv(staging / "per_keypoint.csv", index=False)
        pd.DataFrame(curve_rows(seed_rows)).to_csv(staging / "curves.csv", index=False)
        write_files(staging, files)
    write_report([target], target)
    return markdown


def _job_bar(jobs: list, representations: dict, steps: int, config: TrainConfig, device: torch.device,
             shown: bool) -> tuple[tqdm, dict]:
    """One progress bar for the whole job, and how far each (representation, input)'s optimizer step moves it.

    Shown, it counts estimated seconds (each step weighed by ``estimate_step_seconds``), so that its remaining
    time is the job's: a count of steps reads the remaining time off the job that runs now, and the main job's
    NerPE steps, about five times SimCC's, would stand for SimCC's too.
    """
    keys = dict.fromkeys(key for key, _ in jobs)
    if not shown:
        return tqdm(disable=True), dict.fromkeys(keys, 1.0)
    step_seconds = {}
    for name, size in keys:
        step_seconds[name, size] = estimate_step_seconds(representations[name, size], config, device)
        log.info("one training step of %s at %s: about %.2f s", name, size_name(size), step_seconds[name, size])
    total = steps * sum(step_seconds[key] for key, _ in jobs)
    bar_format = "{desc}{percentage:3.0f}%|{bar}| {elapsed}<{remaining}{postfix}"  # its count is seconds
    return tqdm(total=total, bar_format=bar_format), step_seconds


def run(spec: RunSpec, shard: str | None = None) -> Path | None:
    """Run the whole job (or one shard of it); returns the results directory (None on ranks other than 0)."""
    device, context = init_distributed(resolve_device(spec.device))
    shard_index, shard_count = parse_shard(shard)
    split = load_split(spec.data, spec.image_root, spec.split)
    train_set, val_set = split.train, split.val
    if spec.steps is not None:
        epochs = -(-spec.steps // steps_per_epoch(len(train_set), spec.train))
        spec = replace(spec, train=replace(spec.train, epochs=epochs))
    representations: dict[tuple[str, tuple[int, int]], Representation] = {}
    for size in spec.resolutions:
        for name in spec.representations:
            representations[name, size] = build_representation(
                name, size, train_set.num_keypoints, **spec.overrides.get(name, {}))
    seeds = range(spec.first_seed, spec.first_seed + spec.seeds)
    jobs = [(key, seed) for key in representations for seed in seeds][shard_index::shard_count]
    torch.set_float32_matmul_precision("high")

    run_name = spec.run_name() + (f".shard-{shard_index}-of-{shard_count}" if shard_count > 1 else "")
    seed_rows: list[dict] = []
    files: dict[str, str] = {}
    arrays = {"image_ids": val_set.image_ids, "visible": val_set.visible, "target_image": val_set.keypoints}
    baseline_arrays: dict[str, np.ndarray] = {}
    baselines, means = [], {}
    for size in dict.fromkeys(size for (_, size), _ in jobs):
        baseline = mean_pose(train_set, val_set, size)
        if baseline is None:
            log.warning("no mean-pose baseline at %s: a keypoint is never labelled in the training crops",
                        size_name(size))
            continue
        means[size] = baseline.pop("mean_input")
        for array_name, array in baseline.pop("predictions").items():
            baseline_arrays[f"{MEAN_POSE}_{size_name(size)}/{array_name}"] = array
        baselines.append({"representation": MEAN_POSE, "input": size_name(size), "baseline": True, "seeds": [],
                          **baseline})
    floors = {}
    steps = steps_per_epoch(len(train_set), spec.train) * spec.train.epochs
    bar, step_seconds = _job_bar(jobs, representations, steps, spec.train, device,
                                 shown=spec.progress and context.is_main)
    for (name, size), seed in jobs:
        representation = representations[name, size]
        if (name, size) not in floors:
            floors[name, size] = floor.floor_error(representation)
        log.info("training %s at %s, seed %d", name, size_name(size), seed)
        checkpoint = spec.checkpoint_dir / spec.run_name() / f"{name}_{size_name(size)}_seed{seed}.pt"
        mean = {MEAN_POSE_KEY: means[size].tolist()} if size in means else None
        row = run_one(representation, train_set, val_set, spec.train, device, seed, checkpoint,
                      spec.resume, spec.progress, context, bar, step_seconds[name, size], meta=mean)
        if row is None:  # not rank 0
            continue
        label = f"{name}_{size_name(size)}_seed{seed}"
        predictions = row.pop("predictions")
        files.update(prediction_files(val_set, predictions, label))
        for array_name, array in predictions.items():
            arrays[f"{label}/{array_name}"] = array
        seed_rows.append({**representation_columns(name, representation, floors[name, size]), **row})
    bar.close()
    if not context.is_main:
        return None
    record = {
        "run": run_name,
        "data": {"name": train_set.name, "source": str(train_set.source), "keypoint_names": train_set.keypoint_names,
                 "train_instances": len(train_set), "val_instances": len(val_set),
                 "split_seed": split.record.get("seed"), "val_fraction": split.record.get("val_fraction"),
                 "split": split.description,
                 **({"val_source": split.record["val_source"]} if "val_source" in split.record else {}),
                 "image_root": str(train_set.image_folder), "oks_sigmas": train_set.sigma_note,
                 "flip_test": bool(spec.train.flip_test and train_set.flip_pairs)},
        "split": split.record,
        "train": describe(spec.train),
        "training_dtype": str(training_dtype(spec.train.precision, device)).removeprefix("torch."),
        "baselines": baselines,
        "processes": context.world_size,
        "shard": f"{shard_index}/{shard_count}",
        "seeds": list(seeds),
        "representations": {f"{name}@{size_name(size)}": {"class": f"{type(rep).__module__}.{type(rep).__qualname__}",
                                                          "config": rep.resolved_config()}
                            for (name, size), rep in representations.items()},
        **results.provenance(device),
    }
    print(write_run(spec.out / run_name, record, seed_rows, arrays, baseline_arrays, files))
    return spec.out / run_name


def _data_identity(data: dict) -> dict:
    """What makes two runs' evaluations comparable: the annotation file by name (not by absolute path, which
    differs between the checkouts or machines that ran the shards of one sweep), its keypoints and the split."""
    identity = {"file": Path(data["source"]).name, **{key: data[key] for key in (
        "name", "keypoint_names", "train_instances", "val_instances", "split_seed", "val_fraction", "flip_test")}}
    if "val_source" in data:  # only runs validated on a second file have one; older runs match as before
        identity["val_file"] = Path(data["val_source"]).name
    return identity


def _schedule(train: dict) -> dict:
    """The training settings that change results (not the loader's workers or the log interval)."""
    return {key: value for key, value in train.items() if key not in ("num_workers", "log_every")}


def _sources(record: dict) -> list[dict]:
    """The runs a record was made by: itself, or for a merged record the runs it was merged from."""
    return record.get("sources") or [{key: record[key] for key in ("run", "command", "git_commit", "device")}]


def _require_same(directories: list[Path], records: list[dict], describe_value, what: str) -> None:
    """An error naming the directories whose records ``describe_value`` tells apart from the first one's."""
    values = [json.dumps(describe_value(record), sort_keys=True) for record in records]
    differing = [str(d) for d, value in zip(directories, values) if value != values[0]]
    if differing:
        raise HeatbenchError(f"merge: {directories[0]} and {', '.join(differing)} {what}")


def merge(directories: list[Path], target: Path) -> str:
    """Combine run directories (e.g. the shards of one sweep, or runs at other resolutions) into one run
    directory at ``target``. They must share the data, split and schedule; rows are ordered by input size, then
    by the order the runs named their representations, then by seed."""
    directories, target = [Path(directory) for directory in directories], Path(target)
    records = []
    for directory in directories:
        path = directory / "results.json"
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as error:
            raise HeatbenchError(f"{path}: not a readable heatbench results file ({error})") from error
    _require_same(directories, records, lambda r: _data_identity(r["data"]),
                  "were evaluated on different data or splits")
    _require_same(directories, records, lambda r: _schedule(r["train"]), "were trained with different schedules")
    representations: dict[str, dict] = {}
    for directory, record in zip(directories, records):
        # only what a directory trained constrains the merge: a shard records every configuration of its job
        trained = {f"{row['representation']}@{row['input']}" for row in record["seed_rows"]}
        for key, description in record["representations"].items():
            if key in trained and representations.setdefault(key, description) != description:
                raise HeatbenchError(f"merge: {directory} configures {key} differently from an earlier directory")
    names = list(dict.fromkeys(key.split("@")[0] for key in representations))
    seed_rows = [row for record in records for row in record["seed_rows"]]
    keys = [(row["representation"], row["input"], row["seed"]) for row in seed_rows]
    if len(set(keys)) != len(keys):
        raise HeatbenchError("merge: the same representation, input and seed appears in more than one directory")
    seed_rows.sort(key=lambda row: (*parse_resolutions(row["input"]), names.index(row["representation"]), row["seed"]))
    arrays: dict[str, np.ndarray] = {}
    baseline_arrays: dict[str, np.ndarray] = {}
    files: dict[str, str] = {}
    for directory in directories:
        for name, into in ((results.PREDICTIONS, arrays), (results.BASELINE_PREDICTIONS, baseline_arrays)):
            with np.load(directory / name) as stored:
                into.update({key: stored[key] for key in stored.files})
        files.update({f"{PREDICTION_FOLDER}/{path.name}": path.read_text()
                      for path in sorted((directory / PREDICTION_FOLDER).glob("*"))})
    sources = [source for record in records for source in _sources(record)]
    record = {key: value for key, value in records[0].items() if key not in ("rows", "seed_rows")}
    baselines: dict[str, dict] = {}  # per input, the union of the runs' baseline fields (older runs lack some)
    for row in (row for record in records for row in record.get("baselines", [])):
        baselines[row["input"]] = {**row, **baselines.get(row["input"], {})}
    record.update(run=target.name, shard=None, seeds=sorted({row["seed"] for row in seed_rows}),
                  representations=representations, sources=sources, baselines=list(baselines.values()),
                  command=" ".join(["python -m heatbench merge", *map(str, directories), "--out", str(target)]),
                  git_commit=", ".join(dict.fromkeys(source["git_commit"] for source in sources)),
                  device=", ".join(dict.fromkeys(source["device"] for source in sources)))
    return write_run(target, record, seed_rows, arrays, baseline_arrays, files)
