"""Shared fixtures. Tests use only files under tests/data, so the suite passes on a fresh clone."""
from pathlib import Path

import pytest
import torch

DATA = Path(__file__).parent / "data"
MOUSE_MINI = DATA / "mirror_mouse_mini" / "CollectedData.csv"


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tests check results, not speed, on small tensors: one intra-op thread is as fast as two there, and on a
    shared 2-core machine OpenMP's spinning threads made whole files several times slower."""
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


@pytest.fixture
def mouse_mini() -> Path:
    return MOUSE_MINI
