"""A pose model is the shared backbone followed by one representation's head; nothing else differs."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


class PoseModel(nn.Module):
    """``head(backbone(images))``: images (B, 3, H, W) -> whatever the representation's ``decode`` takes."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, images: torch.Tensor) -> Any:
        return self.head(self.backbone(images))


def count_parameters(module: nn.Module) -> int:
    """Number of parameters of ``module``, trainable or not, each shared tensor counted once (buffers excluded)."""
    return sum(parameter.numel() for parameter in module.parameters())
