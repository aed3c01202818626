"""Cost of a representation: parameters, FLOPs, latency, throughput and peak memory, measured one way.

The ``run`` table and the ``profile`` command both call these functions, so their numbers agree.

- FLOPs come from ``torch.utils.flop_counter.FlopCounterMode``, which counts matrix multiplications,
  convolutions (transposed ones included) and attention as 2 FLOPs per multiply-accumulate, and nothing for
  elementwise ops, normalisation, pooling, softmax or argmax. Bias additions are not counted either. They are
  reported in GFLOPs (1e9 FLOPs) per image: the count for one call divided by its batch.
- Inference is ``decode(model(images))``, because a decode can itself run network layers (NerPE's MLP) and
  that cost belongs to the representation. Training FLOPs are those of ``encode``, the forward and the
  ``loss`` (NerPE's loss queries its MLP); the backward pass is not counted.
- Latency is the median wall time (``time.perf_counter``) of ``repeats`` calls after ``warmup`` untimed
  ones, with the spread as the interquartile range (75th minus 25th percentile, linear interpolation) (ours:
  robust to the occasional slow run on a shared CPU). On CUDA the device is synchronised before and after
  each call, so the time covers the kernels and not only their launch.
- Peak memory is the most memory in use while the call runs, above what was in use when it started.
  CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (exact, tensor allocations
  only, not the caching allocator's reserve). CPU: the resident set size read from ``/proc/self/statm`` by
  a background thread every ``RSS_SAMPLE_INTERVAL_S`` (ours: 1 ms), page-sized. Before the baseline, glibc's
  ``malloc_trim(0)`` hands the heap's free pages back to the OS: PyTorch's CPU allocator caches nothing,
  but glibc keeps memory freed by earlier calls resident, and a call that reuses it shows too little growth
  (after larger calls, none at all). A peak shorter than the interval can still be missed, so the CPU figure is a
  lower bound. Without ``/proc`` (macOS) it falls back to the growth of ``ru_maxrss``, which is monotone
  and reads 0 once an earlier call went higher.

Synthetic inputs: images are standard normal, keypoints uniform inside the input, all visible, from a
generator seeded with ``SEED`` (ours: the cost of these representations does not depend on the values).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from .models.pose_model import PoseModel, count_parameters
from .optim import adam, train_step, training_loss
from .representation import Representation

SEED = 0
RSS_SAMPLE_INTERVAL_S = 0.001
_STATM = Path("/proc/self/statm")


def parameter_counts(model: PoseModel) -> dict[str, int]:
    """Parameters of the head alone and of the whole model (backbone + head)."""
    return {"head_params": count_parameters(model.head), "total_params": count_parameters(model)}


def flops_per_image(fn: Callable[[], Any], batch: int) -> float:
    """GFLOPs per image of one call of ``fn``, which processes ``batch`` images (see the module docstring)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / batch / 1e9


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def latency(fn: Callable[[], Any], device: torch.device | str, warmup: int = 3, repeats: int = 10) -> dict:
    """Wall time of one call of ``fn``: median_s, spread_s (interquartile range) and runs (timed calls)."""
    if repeats < 2:
        raise ValueError(f"repeats={repeats}: an interquartile range needs at least 2 timed runs")
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        fn()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    lower, _, upper = statistics.quantiles(times, n=4, method="inclusive")
    return {"median_s": statistics.median(times), "spread_s": upper - lower, "runs": repeats}


def _resident_bytes() -> int:
    return int(_STATM.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _max_rss_bytes() -> int:
    import resource  # Unix only; imported here so that importing heatbench.cost works everywhere

    # ru_maxrss is in KiB on Linux and in bytes on macOS.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (macOS, musl)."""
    name = ctypes.util.find_library("c")
    library = ctypes.CDLL(name) if name else None
    return getattr(library, "malloc_trim", None)


def _cpu_peak_memory(fn: Callable[[], Any]) -> int:
    if not _STATM.exists():
        before = _max_rss_bytes()
        fn()
        return _max_rss_bytes() - before
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
    baseline = _resident_bytes()
    peak = baseline
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _resident_bytes())
            done.wait(RSS_SAMPLE_INTERVAL_S)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        fn()
    finally:
        done.set()
        sampler.join()
    return max(peak - baseline, 0)


def peak_memory(fn: Callable[[], Any], device: torch.device | str) -> int:
    """Bytes of memory in use above the starting level at the peak of one call of ``fn`` (module docstring)."""
    device = torch.device(device)
    if device.type != "cuda":
        return _cpu_peak_memory(fn)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    baseline = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - baseline


def _synthetic_batch(representation: Representation, input_size: tuple[int, int], device: torch.device, batch: int):
    """(B, 3, H, W) standard-normal images, (B, K, 2) keypoints uniform in the input, (B, K) all visible."""
    height, width = input_size
    generator = torch.Generator().manual_seed(SEED)
    images = torch.randn(batch, 3, height, width, generator=generator)
    scale = torch.tensor([width, height], dtype=torch.float32)
    keypoints = torch.rand(batch, representation.num_keypoints, 2, generator=generator) * scale
    visible = torch.ones(batch, representation.num_keypoints)
    return images.to(device), keypoints.to(device), visible.to(device)


def measure_inference(
    representation: Representation,
    model: PoseModel,
    input_size: tuple[int, int],
    device: torch.device | str,
    batch: int,
    warmup: int = 3,
    repeats: int = 10,
) -> dict:
    """Inference cost of ``decode(model(images))`` on a synthetic batch of (H, W) = ``input_size`` images.

    Moves ``model`` to ``device`` and times it in eval mode under ``torch.inference_mode``; its training mode
    is restored afterwards; ``warmup`` and ``repeats`` are :func:`latency`'s. Returns gflops_per_image,
    latency_ms_per_image (median batch time / batch), latency_spread_ms_per_image (IQR / batch),
    throughput_images_per_s, peak_memory_bytes and batch.
    """
    device = torch.device(device)
    images, _, _ = _synthetic_batch(representation, input_size, device, batch)
    was_training = model.training
    model.to(device).eval()

    def infer():
        return representation.decode(model(images))

    try:
        with torch.inference_mode():
            gflops = flops_per_image(infer, batch)
            timing = latency(infer, device, warmup, repeats)
            memory = peak_memory(infer, device)
    finally:
        model.train(was_training)
    return {
        "gflops_per_image": gflops,
        "latency_ms_per_image": timing["median_s"] * 1e3 / batch,
        "latency_spread_ms_per_image": timing["spread_s"] * 1e3 / batch,
        "throughput_images_per_s": batch / timing["median_s"],
        "peak_memory_bytes": memory,
        "batch": batch,
    }


def _train_step_call(representation: Representation, model: PoseModel, input_size: tuple[int, int],
                     device: torch.device, batch: int,
                     dtype: torch.dtype) -> tuple[Callable[[], torch.Tensor], Callable[[], torch.Tensor]]:
    """(the loss, one training step) on a synthetic batch, as ``train`` takes them; ``model`` is moved to
    ``device`` and trained by every step."""
    images, keypoints, visible = _synthetic_batch(representation, input_size, device, batch)
    model.to(device).train()
    optimizer = adam(model.parameters(), 1e-3)
    return (lambda: training_loss(representation, model, images, keypoints, visible, dtype),
            lambda: train_step(representation, model, optimizer, images, keypoints, visible, dtype))


def time_train_step(representation: Representation, model: PoseModel, input_size: tuple[int, int],
                    device: torch.device | str, batch: int, dtype: torch.dtype, warmup: int = 3,
                    repeats: int = 10) -> dict:
    """:func:`latency` of one training step (encode, forward under ``dtype`` autocast, loss, backward, Adam
    step) on a synthetic batch. ``model`` is trained by the timed steps: pass a throwaway model."""
    device = torch.device(device)
    step = _train_step_call(representation, model, input_size, device, batch, dtype)[1]
    return latency(step, device, warmup, repeats)


def measure_train_step(
    representation: Representation,
    model: PoseModel,
    input_size: tuple[int, int],
    device: torch.device | str,
    batch: int,
    warmup: int = 3,
    repeats: int = 10,
) -> dict:
    """Cost of one float32 training step (encode, forward, loss, backward, Adam step) on a synthetic batch.

    ``model`` is moved to ``device`` and trained by the measured steps: pass a throwaway model. ``warmup``
    and ``repeats`` are :func:`latency`'s; the warmup steps also allocate Adam's state. Returns
    train_gflops_per_image (encode + forward + loss, no backward), step_time_s (median), step_time_spread_s
    (IQR), train_images_per_s, peak_memory_bytes (one step) and batch.
    """
    device = torch.device(device)
    forward_loss, step = _train_step_call(representation, model, input_size, device, batch, torch.float32)
    gflops = flops_per_image(forward_loss, batch)
    timing = latency(step, device, warmup, repeats)
    memory = peak_memory(step, device)
    return {
        "train_gflops_per_image": gflops,
        "step_time_s": timing["median_s"],
        "step_time_spread_s": timing["spread_s"],
        "train_images_per_s": batch / timing["median_s"],
        "peak_memory_bytes": memory,
        "batch": batch,
    }
