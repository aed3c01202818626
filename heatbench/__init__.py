"""heatbench: keypoint representations for pose estimation, compared under one backbone, data and schedule."""
from .representation import Representation, available_representations, build_representation

__all__ = ["Representation", "available_representations", "build_representation"]
__version__ = "0.1.0"
