"""One training and evaluation harness for every representation, on CPU or CUDA through the same code.

The device is chosen once. The training forward runs under bf16 autocast on CUDA and on CPUs with bf16 units
(``TrainConfig.precision``; each loss gets float32 outputs), with channels-last images on CUDA, where the data
loader also pins memory; the loop keeps the running loss on the device (no ``.item()`` per step; it is read
every ``log_every`` steps). Evaluation runs in float32 with the flip test when the data set defines flip
pairs, every ``eval_every`` epochs for the learning curve and after the last. A checkpoint is written after
each evaluation, after the last epoch, and otherwise after the first epoch that ends CHECKPOINT_SECONDS after
the previous one; a run restarted with ``resume`` continues from it.

Under ``torchrun`` the same code trains with DistributedDataParallel (NCCL on CUDA with SyncBatchNorm, gloo
on CPU, where BatchNorm statistics stay per process because SyncBatchNorm needs CUDA). Every process draws
the same global batches as a single-process run and takes its slice of each, so a run's result does not
depend on the number of processes beyond BatchNorm statistics and float summation order. Evaluation is
sharded over the processes and gathered to rank 0; only rank 0 writes checkpoints and results.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from . import cost
from .data import AugmentConfig, KeypointDataset, TopDownDataset, invert_affine
from .errors import HeatbenchError
from .metrics import decoding_agreement, evaluate_predictions, mean_error, per_keypoint_metrics
from .models.pose_model import PoseModel
from .models.resnet import build_backbone
from .optim import adam, train_step
from .representation import Representation

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 600           # 3,000 steps on the default data's 72 training frames at batch 16 (README)
    batch_size: int = 16
    lr: float = 1e-3            # Adam, as SimpleBaseline / HRNet / SimCC / NerPE
    lr_step_fractions: tuple[float, ...] = (90 / 140, 120 / 140)  # SimpleBaseline's steps at 90 and 120 of 140
    lr_factor: float = 0.1
    backbone_depth: int = 18
    pretrained: str | None = None
    flip_test: bool = True      # applied only where the data set defines flip pairs
    num_workers: int = 0        # 0 keeps CPU runs bit-for-bit reproducible and avoids fork overhead on 90 frames
    log_every: int = 20
    eval_every: int = 60        # validate every N epochs for the learning curves (0: only after the last epoch)
    precision: str = "auto"     # training forward: auto (bf16 on CUDA and on CPUs with bf16 units), bf16, float32

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1:
            raise HeatbenchError(f"epochs ({self.epochs}) and batch size ({self.batch_size}) must be >= 1")
        if self.eval_every < 0:
            raise HeatbenchError(f"eval every {self.eval_every} epochs: must be >= 0")
        if self.precision not in PRECISIONS:
            raise HeatbenchError(f"precision {self.precision!r}: expected one of {', '.join(PRECISIONS)}")


PRECISIONS = ("auto", "bf16", "float32")


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 matrix products in hardware (AVX512-BF16 or AMX), where bf16 autocast
    speeds training up instead of emulating it."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def training_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The autocast dtype of the training forward: bf16 where asked for, or with ``auto`` on CUDA and on CPUs
    with bf16 units; float32 otherwise. Evaluation always runs in float32."""
    if precision == "bf16" or (precision == "auto" and (device.type == "cuda" or cpu_has_bf16())):
        return torch.bfloat16
    return torch.float32


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA on a machine without it is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise HeatbenchError("--device cuda: no CUDA device is available")
    if name not in ("cpu", "cuda"):
        raise HeatbenchError(f"--device {name!r}: expected auto, cpu or cuda")
    return torch.device(name)


@dataclass(frozen=True)
class Distributed:
    """This process's place in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> tuple[torch.device, Distributed]:
    """Join the process group when launched by ``torchrun`` (WORLD_SIZE > 1); otherwise a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return device, Distributed()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return device, Distributed(dist.get_rank(), world_size)


class GlobalBatchSampler(Sampler[list[int]]):
    """Shuffled global batches, identical in every process; each process yields its contiguous slice.

    The permutation is drawn from (seed, epoch), so one process with batch B and N processes with B / N each
    see the same global batches. A last global batch smaller than the number of processes is padded from
    the start of the permutation, so that no process gets an empty batch (DistributedSampler does the same).
    """

    def __init__(self, size: int, global_batch: int, seed: int, context: Distributed):
        if global_batch % context.world_size:
            raise HeatbenchError(f"batch size {global_batch} is not divisible by {context.world_size} processes")
        self.size, self.global_batch, self.seed, self.context, self.epoch = size, global_batch, seed, context, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.size // self.global_batch)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        world, rank = self.context.world_size, self.context.rank
        for start in range(0, self.size, self.global_batch):
            batch = order[start:start + self.global_batch]
            batch += order[:max(0, world - len(batch))]
            share = -(-len(batch) // world)
            yield batch[rank * share:(rank + 1) * share]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(representation: Representation, config: TrainConfig) -> PoseModel:
    backbone = build_backbone(depth=config.backbone_depth, pretrained=config.pretrained)
    return PoseModel(backbone, representation.build_head(backbone.out_channels, backbone.stride))


def estimate_step_seconds(representation: Representation, config: TrainConfig, device: torch.device) -> float:
    """Seconds of one training step of ``representation``: two steps timed after one untimed, on a throwaway
    model and a synthetic batch of the training batch size, in the training dtype. A job's progress bar
    weighs each step by it, so that its remaining time holds the slow jobs still to come."""
    model = build_model(representation, dataclasses.replace(config, pretrained=None))
    return cost.time_train_step(representation, model, representation.input_size, device, config.batch_size,
                                training_dtype(config.precision, device), warmup=1, repeats=2)["median_s"]


def _loader(data: TopDownDataset, config: TrainConfig, device: torch.device, shard: list[int] | None = None,
            **batching) -> DataLoader:
    """A loader over ``data`` (or its ``shard`` of indices); images read on the CPU are pinned for the copy to
    CUDA, rendered ones are made on the device already."""
    pin = device.type == "cuda" and data.image_device.type == "cpu"
    return DataLoader(data if shard is None else torch.utils.data.Subset(data, shard), pin_memory=pin,
                      num_workers=config.num_workers, persistent_workers=config.num_workers > 0, **batching)


def checkpoint_meta(representation: Representation, config: TrainConfig, keypoint_names: list[str]) -> dict:
    """What a checkpoint needs to rebuild and score its model without the run that made it: the
    representation's name, resolved config and input size, the keypoint names it was trained on, and the
    training settings (evaluation reuses their batch size and backbone)."""
    return {"representation": representation.name, "input_size": representation.input_size,
            "num_keypoints": representation.num_keypoints, "keypoint_names": list(keypoint_names),
            "config": representation.resolved_config(), "backbone_depth": config.backbone_depth,
            "train": describe(config)}


REBUILD_KEYS = ("representation", "input_size", "num_keypoints", "config", "backbone_depth")


def load_checkpoint(path: Path) -> dict:
    """A checkpoint written by ``run`` (model state, ``meta`` and the training state); anything else, or a
    file that cannot be read, is a one-line error naming it."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise HeatbenchError(f"{path}: no such file") from None
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, AttributeError, ImportError) as error:
        raise HeatbenchError(f"{path}: not a heatbench run checkpoint ({error.__class__.__name__})") from None
    meta = state.get("meta") if isinstance(state, dict) else None
    if not (isinstance(meta, dict) and all(key in meta for key in REBUILD_KEYS) and "model" in state):
        raise HeatbenchError(f"{path}: not a heatbench run checkpoint (no model state with its 'meta' record)")
    return state


# Ours: a ResNet-18 checkpoint with its Adam state is ~200 MB and takes ~0.25 s to write, which after every
# 5-step epoch of the default data was a tenth of the training time; a crash now loses at most a minute.
CHECKPOINT_SECONDS = 60.0


def _save_checkpoint(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save(state, partial)
    os.replace(partial, path)  # a crash mid-write never leaves a truncated checkpoint behind


def train(representation: Representation, model: PoseModel, train_set: KeypointDataset, config: TrainConfig,
          device: torch.device, seed: int, checkpoint: Path | None = None, resume: bool = False,
          progress: bool = True, context: Distributed = Distributed(),
          validate: Callable[[], dict] | None = None, bar: tqdm | None = None, bar_step: float = 1.0,
          meta: dict | None = None) -> tuple[float, list[float], list[dict]]:
    """Train in place; returns the training wall time in seconds (validation excluded), each epoch's mean loss
    and the learning curve, all over every epoch, those done before a ``resume`` included (the checkpoint
    carries them).

    ``validate`` (called on every process, in eval mode, every ``config.eval_every`` epochs and after the last
    one) returns the metrics of one point of the curve; each point also holds its epoch, optimizer step and
    the epoch's training loss. ``bar`` is the job-wide progress bar, advanced by ``bar_step`` per optimizer step
    (the runner's estimate of the step's seconds), and the steps a ``resume`` skips leave its total; ``meta``
    is added to each checkpoint's ``meta`` record."""
    data = TopDownDataset(train_set, representation.input_size, train=True, augment=AugmentConfig(), seed=seed,
                          device=device)
    if len(data) == 0:
        raise HeatbenchError(f"{train_set.source}: the training split is empty")
    sampler = GlobalBatchSampler(len(data), config.batch_size, seed, context)
    loader = _loader(data, config, device, batch_sampler=sampler)
    optimizer = adam(model.parameters(), config.lr)
    milestones = sorted({max(1, round(f * config.epochs)) for f in config.lr_step_fractions})
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=config.lr_factor)
    start_epoch, earlier_seconds, earlier_losses, curve = 0, 0.0, [], []
    if resume and checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch = state["epoch"] + 1
        earlier_seconds, earlier_losses = state["train_seconds"], state["epoch_losses"]
        curve = state.get("curve", [])
        log.info("resumed %s from %s at epoch %d", representation.name, checkpoint, start_epoch)

    on_cuda = device.type == "cuda"
    memory_format = torch.channels_last if on_cuda else torch.contiguous_format
    model.to(device=device, memory_format=memory_format).train()
    network = model
    if context.world_size > 1:
        if on_cuda:
            network = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        network = DistributedDataParallel(network, device_ids=[device.index] if on_cuda else None)
    dtype = training_dtype(config.precision, device)
    own_bar = bar is None
    if own_bar:
        bar = tqdm(total=(config.epochs - start_epoch) * len(loader), disable=not (progress and context.is_main),
                   leave=False)
    if not own_bar and start_epoch:
        bar.total -= start_epoch * len(loader) * bar_step
        bar.refresh()
    bar.set_description(f"train {representation.name} {representation.input_size[0]}x{representation.input_size[1]}")
    started, validation_seconds = time.perf_counter(), 0.0
    last_saved = started
    running, steps_since_log = torch.zeros((), device=device), 0
    epoch_losses: list[torch.Tensor] = []
    for epoch in range(start_epoch, config.epochs):
        data.set_epoch(epoch)
        sampler.set_epoch(epoch)
        epoch_total = torch.zeros((), device=device)
        for step, sample in enumerate(loader, start=1):
            images = sample.image.to(device, non_blocking=True, memory_format=memory_format)
            loss = train_step(representation, network, optimizer, images,
                              sample.keypoints.to(device, non_blocking=True),
                              sample.visible.to(device, non_blocking=True), dtype)
            running += loss
            epoch_total += loss
            steps_since_log += 1
            bar.update(bar_step)
            if step % config.log_every == 0 or step == len(loader):
                mean_loss = (running / steps_since_log).item()  # the only host-device sync, every log_every steps
                if not np.isfinite(mean_loss):
                    raise FloatingPointError(f"{representation.name}: the loss became {mean_loss} at epoch {epoch}")
                bar.set_postfix(epoch=f"{epoch + 1}/{config.epochs}", loss=f"{mean_loss:.4g}")
                running.zero_()
                steps_since_log = 0
        if context.world_size > 1:
            dist.all_reduce(epoch_total)
            epoch_total /= context.world_size
        epoch_losses.append(epoch_total / len(loader))
        scheduler.step()
        evaluate_now = validate is not None and ((epoch + 1) % max(config.eval_every, 1) == 0 and config.eval_every
                                                 or epoch + 1 == config.epochs)
        if evaluate_now:
            validation_started = time.perf_counter()
            model.eval()
            point = {"epoch": epoch + 1, "step": (epoch + 1) * len(loader), "train_loss": float(epoch_losses[-1]),
                     **validate()}
            model.train()
            curve.append(point)
            validation_seconds += time.perf_counter() - validation_started
        save_now = (evaluate_now or epoch + 1 == config.epochs
                    or time.perf_counter() - last_saved >= CHECKPOINT_SECONDS)
        if checkpoint is not None and context.is_main and save_now:
            last_saved = time.perf_counter()
            _save_checkpoint(checkpoint, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                          "scheduler": scheduler.state_dict(), "epoch": epoch,
                                          "torch_rng": torch.get_rng_state(),
                                          "train_seconds": earlier_seconds + time.perf_counter() - started
                                          - validation_seconds,
                                          "epoch_losses": earlier_losses + [float(loss) for loss in epoch_losses],
                                          "curve": curve,
                                          "meta": {**checkpoint_meta(representation, config,
                                                                     train_set.keypoint_names), **(meta or {})}})
    if own_bar:
        bar.close()
    seconds = earlier_seconds + time.perf_counter() - started - validation_seconds
    return seconds, earlier_losses + [float(loss) for loss in epoch_losses], curve


@torch.no_grad()
def predict(representation: Representation, model: PoseModel, dataset: KeypointDataset, config: TrainConfig,
            device: torch.device, progress: bool = True, context: Distributed = Distributed()) -> dict[str, np.ndarray] | None:
    """Predictions for every instance of ``dataset``: input- and image-coordinate keypoints, scores, targets.

    Each process predicts every ``world_size``-th instance; rank 0 gathers them in order and returns them,
    the other ranks return None.
    """
    data = TopDownDataset(dataset, representation.input_size, train=False, augment=None, seed=0, device=device)
    shard = list(range(context.rank, len(data), context.world_size))
    loader = _loader(data, config, device, shard, batch_size=config.batch_size)
    flip_pairs = dataset.flip_pairs if config.flip_test else None
    model.to(device).eval()
    variants = representation.decoding_variants()
    collected = {"pred_input": [], "target_input": [], "scores": [], "affine": [],
                 **{f"pred_input_{name}": [] for name in variants}}
    for sample in tqdm(loader, disable=not (progress and context.is_main), leave=False, desc=f"eval {representation.name}"):
        images = sample.image.to(device, non_blocking=True)
        outputs = model(images)
        if flip_pairs is not None:
            flipped = representation.flip_back(model(images.flip(-1)), flip_pairs)
            outputs = representation.merge_flipped(outputs, flipped)
        keypoints, scores = representation.decode(outputs)
        for name, variant in variants.items():
            collected[f"pred_input_{name}"].append(variant.decode(outputs)[0].float().cpu())
        collected["pred_input"].append(keypoints.float().cpu())
        collected["scores"].append(scores.float().cpu())
        collected["target_input"].append(sample.keypoints)
        collected["affine"].append(sample.affine)
    arrays = {name: torch.cat(parts).double().numpy() for name, parts in collected.items()}
    if context.world_size > 1:
        shards = [None] * context.world_size
        dist.all_gather_object(shards, (shard, arrays))
        if not context.is_main:
            return None
        order = np.argsort(np.concatenate([indices for indices, _ in shards]))
        arrays = {name: np.concatenate([part[name] for _, part in shards])[order] for name in arrays}
    affine = arrays.pop("affine")  # (N, 2, 3): input -> image
    arrays["pred_image"] = np.einsum("nij,nkj->nki", affine[:, :, :2], arrays["pred_input"]) + affine[:, None, :, 2]
    return arrays


# The validation metrics each point of a learning curve records.
CURVE_METRICS = ("mean_error_input_px", "mean_error_image_px", "pck@0.1")


def steps_per_epoch(train_instances: int, config: TrainConfig) -> int:
    return -(-train_instances // config.batch_size)


def score_predictions(dataset: KeypointDataset, predictions: dict[str, np.ndarray]) -> dict:
    """Every metric of ``evaluate_predictions`` for the arrays ``predict`` returns, and under ``per_keypoint``
    those of ``per_keypoint_metrics``."""
    arrays = (predictions["pred_image"], predictions["pred_input"], predictions["target_input"])
    return {**evaluate_predictions(dataset, *arrays, predictions["scores"]),
            "per_keypoint": per_keypoint_metrics(dataset, *arrays)}


def run_one(representation: Representation, train_set: KeypointDataset, val_set: KeypointDataset,
            config: TrainConfig, device: torch.device, seed: int, checkpoint: Path | None = None,
            resume: bool = False, progress: bool = True, context: Distributed = Distributed(),
            bar: tqdm | None = None, bar_step: float = 1.0, meta: dict | None = None) -> dict | None:
    """Train and evaluate one representation x resolution x seed; rank 0 returns its row (metrics, costs).
    ``bar``, ``bar_step`` and ``meta`` are ``train``'s."""
    seed_everything(seed)
    model = build_model(representation, config)
    last: dict = {}

    def validate() -> dict:
        last["predictions"] = predict(representation, model, val_set, config, device, False, context)
        if last["predictions"] is None:  # not rank 0
            return {}
        last["metrics"] = score_predictions(val_set, last["predictions"])
        return {key: last["metrics"][key] for key in CURVE_METRICS}

    train_seconds, epoch_losses, curve = train(representation, model, train_set, config, device, seed, checkpoint,
                                               resume, progress, context, validate, bar, bar_step, meta)
    if "predictions" not in last:  # resumed after the last epoch: nothing was validated in this process
        validate()
    # the unaugmented training frames: whether the model fits what it was trained on, beside what it generalises
    fit = predict(representation, model, train_set, config, device, False, context)
    if not context.is_main:
        return None
    return {
        "seed": seed,
        "train_seconds": train_seconds,
        "train_steps": config.epochs * steps_per_epoch(len(train_set), config),
        "epoch_losses": epoch_losses,
        "curve": curve,
        "processes": context.world_size,
        **evaluation_row(representation, model, last["predictions"], last["metrics"], val_set.visible, device),
        "train_mean_error_input_px": mean_error(fit["pred_input"], fit["target_input"], train_set.visible),
    }


def evaluation_row(representation: Representation, model: PoseModel, predictions: dict[str, np.ndarray],
                   metrics: dict, visible: np.ndarray, device: torch.device) -> dict:
    """What a scored model's row holds, in ``run``'s table and ``evaluate``'s alike: the decoding variants,
    parameter counts, batch-1 inference cost, the metrics of ``predictions`` and the predictions."""
    inference = cost.measure_inference(representation, model, representation.input_size, device, batch=1)
    return {
        **_variant_row(representation, model, predictions, visible, device),
        **cost.parameter_counts(model),
        "inference_gflops": inference["gflops_per_image"],
        "inference_ms": inference["latency_ms_per_image"],
        "inference_ms_spread": inference["latency_spread_ms_per_image"],
        "inference_peak_memory_bytes": inference["peak_memory_bytes"],
        **metrics,
        "predictions": predictions,
    }


MEAN_POSE = "mean pose"
MEAN_POSE_KEY = "mean_pose_input"  # the checkpoint meta's (K, 2) training mean pose in input px


def mean_pose(train_set: KeypointDataset, val_set: KeypointDataset, input_size: tuple[int, int]) -> dict | None:
    """The baseline that looks at no image: every validation instance predicted at the training set's mean
    position of each keypoint in the (unaugmented) crop, with score 1. What a row that learned nothing
    scores; its metrics have the keys of a trained row's, and ``mean_input`` is the (K, 2) mean in input px
    (checkpoints carry it, so that ``evaluate`` has the same bar). None when a keypoint is never labelled in
    the training crops (no mean exists)."""
    _, train_keypoints, train_visible = _crops(train_set, input_size)
    counts = train_visible.sum(axis=0)  # (K,)
    if not counts.all():
        return None
    mean = (train_keypoints * train_visible[..., None]).sum(axis=0) / counts[:, None]  # (K, 2) input px
    train_error = mean_error(np.broadcast_to(mean, train_keypoints.shape), train_keypoints, train_visible)
    return {**mean_pose_scores(mean, val_set, input_size), "train_mean_error_input_px": train_error,
            "mean_input": mean}


def _crops(dataset: KeypointDataset, input_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(affines, keypoints, visible) of every instance's unaugmented crop."""
    data = TopDownDataset(dataset, input_size, train=False)
    affines, keypoints, visible = zip(*(data.geometry(index) for index in range(len(data))))
    return np.stack(affines), np.stack(keypoints), np.stack(visible)


def mean_pose_scores(mean: np.ndarray, dataset: KeypointDataset, input_size: tuple[int, int]) -> dict:
    """The metrics, and under ``predictions`` the arrays, of predicting the (K, 2) input-px ``mean`` for
    every instance of ``dataset``."""
    affines, target_input, _ = _crops(dataset, input_size)
    pred_input = np.broadcast_to(mean, target_input.shape)
    input_to_image = invert_affine(affines)
    predictions = {"pred_input": pred_input, "target_input": target_input,
                   "scores": np.ones(target_input.shape[:2]),
                   "pred_image": np.einsum("nij,nkj->nki", input_to_image[:, :, :2], pred_input)
                   + input_to_image[:, None, :, 2]}
    return {**score_predictions(dataset, predictions), "predictions": predictions}


def _variant_row(representation: Representation, model: PoseModel, predictions: dict[str, np.ndarray],
                 visible: np.ndarray, device: torch.device) -> dict:
    """The variants' names (``decoding_variants``), and per variant its mean error, its agreement with the
    main decoding within one output-grid step on each axis, and its inference GFLOPs and batch-1 time."""
    (height, width), (out_h, out_w) = representation.input_size, representation.output_size()
    variants = representation.decoding_variants()
    row = {"decoding_variants": list(variants)}
    for name, variant in variants.items():
        decoded = predictions[f"pred_input_{name}"]
        inference = cost.measure_inference(variant, model, representation.input_size, device, batch=1)
        row.update({
            f"{name}_mean_error_input_px": mean_error(decoded, predictions["target_input"], visible),
            f"{name}_agreement": decoding_agreement(decoded, predictions["pred_input"], (width / out_w, height / out_h),
                                                    visible),
            f"{name}_gflops": inference["gflops_per_image"],
            f"{name}_ms": inference["latency_ms_per_image"],
        })
    return row


def describe(config: TrainConfig) -> dict:
    return dataclasses.asdict(config)
