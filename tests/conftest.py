"""Shared fixtures. Tests use only files under tests/data, so the suite passes on a fresh clone."""
from pathlib import Path

import pytest
import torch

DATA = Path(__file__).parent / "data"
MOUSE_MINI = DATA / "mirror_mouse_mini" / "CollectedData.csv"


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


@pytest.fixture
def mouse_mini() -> Path:
    return MOUSE_MINI
