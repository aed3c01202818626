"""A check of the CUDA path's device discipline that needs no GPU: run the code on PyTorch's meta device under
:class:`OneDevicePerOp`, and a tensor made on the CPU (a constant built without ``device=``) that meets the
batch fails there, where on CUDA it would fail or be copied from the host at every call."""
from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class OneDevicePerOp(TorchDispatchMode):
    """Fails every operator call that takes tensors of one or more dimensions on more than one device (a 0-dim
    CPU tensor is a scalar that every device accepts)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        tensors = [leaf for leaf in tree_leaves((args, kwargs)) if isinstance(leaf, torch.Tensor) and leaf.dim()]
        devices = {tensor.device.type for tensor in tensors}
        assert len(devices) <= 1, f"{func} takes tensors on {sorted(devices)}"
        return func(*args, **(kwargs or {}))
