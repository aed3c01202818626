"""The training step and its optimizer, one definition for ``train``, for the cost table's and the progress
bar's step timing and for the benchmarks, so that what is timed is what trains."""
from __future__ import annotations

from typing import Iterable

import torch

from .representation import Representation, map_tensors


def adam(parameters: Iterable[torch.nn.Parameter], lr: float) -> torch.optim.Adam:
    """Adam with PyTorch's defaults (betas 0.9 / 0.999, eps 1e-8, no weight decay), as SimpleBaseline, HRNet,
    SimCC and NerPE build it. Ours: the fused implementation, the same update in one kernel per tensor, which
    is faster than the default for-loop one on CPU, where the optimizer is a large share of a ResNet-18 step."""
    return torch.optim.Adam(parameters, lr=lr, fused=True)


def float32_outputs(outputs):
    """Tensor outputs (a tensor or a tuple of them) in float32, so that a loss's softmax, log-sum-exp or
    Sinkhorn iterations never run in bf16: CPU autocast keeps those ops in their input's dtype, where CUDA's
    promotes them. Other outputs (NerPE's field, whose loss runs the query MLP) are passed on as they are;
    their loss casts what it needs."""
    return map_tensors(torch.Tensor.float, outputs) if isinstance(outputs, (torch.Tensor, tuple)) else outputs


def training_loss(representation: Representation, network: torch.nn.Module, images: torch.Tensor,
                  keypoints: torch.Tensor, visible: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The loss of one training batch: encode, the forward under ``dtype`` autocast, the loss on float32 outputs."""
    targets = representation.encode(keypoints, visible)
    with torch.autocast(device_type=images.device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        return representation.loss(float32_outputs(network(images)), targets)


def train_step(representation: Representation, network: torch.nn.Module, optimizer: torch.optim.Optimizer,
               images: torch.Tensor, keypoints: torch.Tensor, visible: torch.Tensor,
               dtype: torch.dtype) -> torch.Tensor:
    """One optimizer step on a batch (:func:`training_loss`, backward, ``optimizer``); returns the loss, detached."""
    loss = training_loss(representation, network, images, keypoints, visible, dtype)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()
