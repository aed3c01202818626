"""One training and evaluation harness for every representation, on CPU or CUDA through the same code.

The device is chosen once; on CUDA the training forward runs under bf16 autocast with channels-last images,
the data loader pins memory, and the loop keeps the running loss on the device (no ``.item()`` per step; it
is read every ``log_every`` steps). Evaluation runs in float32 with the flip test when the data set defines
flip pairs. A checkpoint is written after every epoch, and a run restarted with ``resume`` continues from it.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from . import cost
from .data import AugmentConfig, KeypointDataset, TopDownDataset
from .errors import HeatbenchError
from .metrics import evaluate_predictions
from .models.pose_model import PoseModel
from .models.resnet import build_backbone
from .representation import Representation

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 40            # the CPU default; see the README for what it trades against the papers' 140
    batch_size: int = 16
    lr: float = 1e-3            # Adam, as SimpleBaseline / HRNet / SimCC / NerPE
    lr_step_fractions: tuple[float, ...] = (90 / 140, 120 / 140)  # SimpleBaseline's steps at 90 and 120 of 140
    lr_factor: float = 0.1
    backbone_depth: int = 18
    pretrained: str | None = None
    flip_test: bool = True      # applied only where the data set defines flip pairs
    num_workers: int = 0        # 0 keeps CPU runs bit-for-bit reproducible and avoids fork overhead on 90 frames
    log_every: int = 20

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1:
            raise HeatbenchError(f"epochs ({self.epochs}) and batch size ({self.batch_size}) must be >= 1")


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA on a machine without it is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise HeatbenchError("--device cuda: no CUDA device is available")
    if name not in ("cpu", "cuda"):
        raise HeatbenchError(f"--device {name!r}: expected auto, cpu or cuda")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(representation: Representation, config: TrainConfig) -> PoseModel:
    backbone = build_backbone(depth=config.backbone_depth, pretrained=config.pretrained)
    return PoseModel(backbone, representation.build_head(backbone.out_channels, backbone.stride))


def _loader(dataset: TopDownDataset, config: TrainConfig, device: torch.device, shuffle: bool, seed: int) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=config.batch_size, shuffle=shuffle, generator=generator,
                      num_workers=config.num_workers, pin_memory=device.type == "cuda",
                      persistent_workers=config.num_workers > 0)


def _save_checkpoint(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save(state, partial)
    os.replace(partial, path)  # a crash mid-write never leaves a truncated checkpoint behind


def train(representation: Representation, model: PoseModel, train_set: KeypointDataset, config: TrainConfig,
          device: torch.device, seed: int, checkpoint: Path | None = None, resume: bool = False,
          progress: bool = True) -> tuple[float, list[float]]:
    """Train in place; returns the wall time in seconds (of this process's epochs) and each epoch's mean loss."""
    data = TopDownDataset(train_set, representation.input_size, train=True, augment=AugmentConfig(), seed=seed)
    if len(data) == 0:
        raise HeatbenchError(f"{train_set.source}: the training split is empty")
    loader = _loader(data, config, device, shuffle=True, seed=seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    milestones = sorted({max(1, round(f * config.epochs)) for f in config.lr_step_fractions})
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=config.lr_factor)
    start_epoch = 0
    if resume and checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch = state["epoch"] + 1
        log.info("resumed %s from %s at epoch %d", representation.name, checkpoint, start_epoch)

    on_cuda = device.type == "cuda"
    memory_format = torch.channels_last if on_cuda else torch.contiguous_format
    model.to(device=device, memory_format=memory_format).train()
    started = time.perf_counter()
    bar = tqdm(total=(config.epochs - start_epoch) * len(loader), disable=not progress, leave=False,
               desc=f"train {representation.name} {representation.input_size[0]}x{representation.input_size[1]}")
    running, steps_since_log = torch.zeros((), device=device), 0
    epoch_losses: list[torch.Tensor] = []
    for epoch in range(start_epoch, config.epochs):
        data.set_epoch(epoch)
        epoch_total = torch.zeros((), device=device)
        for step, sample in enumerate(loader, start=1):
            images = sample.image.to(device, non_blocking=True, memory_format=memory_format)
            targets = representation.encode(sample.keypoints.to(device, non_blocking=True),
                                            sample.visible.to(device, non_blocking=True))
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=on_cuda):
                loss = representation.loss(model(images), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running += loss.detach()
            epoch_total += loss.detach()
            steps_since_log += 1
            bar.update()
            if step % config.log_every == 0 or step == len(loader):
                mean_loss = (running / steps_since_log).item()  # the only host-device sync, every log_every steps
                if not np.isfinite(mean_loss):
                    raise FloatingPointError(f"{representation.name}: the loss became {mean_loss} at epoch {epoch}")
                bar.set_postfix(epoch=epoch, loss=f"{mean_loss:.4g}")
                running.zero_()
                steps_since_log = 0
        epoch_losses.append(epoch_total / len(loader))
        scheduler.step()
        if checkpoint is not None:
            _save_checkpoint(checkpoint, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                          "scheduler": scheduler.state_dict(), "epoch": epoch,
                                          "torch_rng": torch.get_rng_state()})
    bar.close()
    return time.perf_counter() - started, [float(loss) for loss in epoch_losses]


@torch.no_grad()
def predict(representation: Representation, model: PoseModel, dataset: KeypointDataset, config: TrainConfig,
            device: torch.device, progress: bool = True) -> dict[str, np.ndarray]:
    """Predictions for every instance of ``dataset``: input- and image-coordinate keypoints, scores, targets."""
    data = TopDownDataset(dataset, representation.input_size, train=False, augment=None, seed=0)
    loader = _loader(data, config, device, shuffle=False, seed=0)
    flip_pairs = dataset.flip_pairs if config.flip_test else None
    model.to(device).eval()
    collected = {"pred_input": [], "target_input": [], "scores": [], "affine": []}
    for sample in tqdm(loader, disable=not progress, leave=False, desc=f"eval {representation.name}"):
        images = sample.image.to(device, non_blocking=True)
        outputs = model(images)
        if flip_pairs is not None:
            flipped = representation.flip_back(model(images.flip(-1)), flip_pairs)
            outputs = representation.merge_flipped(outputs, flipped)
        keypoints, scores = representation.decode(outputs)
        collected["pred_input"].append(keypoints.float().cpu())
        collected["scores"].append(scores.float().cpu())
        collected["target_input"].append(sample.keypoints)
        collected["affine"].append(sample.affine)
    arrays = {name: torch.cat(parts).double().numpy() for name, parts in collected.items()}
    affine = arrays.pop("affine")  # (N, 2, 3): input -> image
    arrays["pred_image"] = np.einsum("nij,nkj->nki", affine[:, :, :2], arrays["pred_input"]) + affine[:, None, :, 2]
    return arrays


def run_one(representation: Representation, train_set: KeypointDataset, val_set: KeypointDataset,
            config: TrainConfig, device: torch.device, seed: int, checkpoint: Path | None = None,
            resume: bool = False, progress: bool = True) -> dict:
    """Train and evaluate one representation x resolution x seed; returns its row (metrics and costs)."""
    seed_everything(seed)
    model = build_model(representation, config)
    train_seconds, epoch_losses = train(representation, model, train_set, config, device, seed, checkpoint, resume, progress)
    predictions = predict(representation, model, val_set, config, device, progress)
    metrics = evaluate_predictions(val_set, predictions["pred_image"], predictions["pred_input"],
                                   predictions["target_input"], predictions["scores"])
    inference = cost.measure_inference(representation, model, representation.input_size, device, batch=1)
    return {
        "seed": seed,
        "train_seconds": train_seconds,
        "epoch_losses": epoch_losses,
        **cost.parameter_counts(model),
        "inference_gflops": inference["gflops_per_image"],
        "inference_ms": inference["latency_ms_per_image"],
        "inference_ms_spread": inference["latency_spread_ms_per_image"],
        "inference_peak_memory_bytes": inference["peak_memory_bytes"],
        **metrics,
        "predictions": predictions,
    }


def describe(config: TrainConfig) -> dict:
    return dataclasses.asdict(config)
