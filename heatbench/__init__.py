"""heatbench: keypoint representations for pose estimation, compared under one backbone, data and schedule."""
import os

# PyTorch's CPU allocator backs tensors of 2 MiB and more with transparent huge pages when this is set; NumPy
# does so by default. A batch of fresh (B, K, h, w) maps is that large, and faulting it in 4 KiB pages took
# longer than computing it (benchmarks/test_codec_speed.py, 256x192). Set before torch allocates; a user's
# own value wins.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from .representation import Representation, available_representations, build_representation

__all__ = ["Representation", "available_representations", "build_representation"]
__version__ = "0.1.0"
