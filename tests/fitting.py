"""Fitting a representation's head to fixed targets: the loss curve the "loss falls" tests read."""
from __future__ import annotations

import torch


def adam_losses(representation, head, features: torch.Tensor, targets, steps: int, lr: float) -> list[float]:
    """The loss before each of ``steps`` Adam steps on ``head`` alone, fed the same ``features`` every step."""
    optimiser = torch.optim.Adam(head.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = representation.loss(head(features), targets)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    return losses
