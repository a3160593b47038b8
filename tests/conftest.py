"""Shared fixtures: small random models, seeded, on the CPU."""
from __future__ import annotations

import pytest
import torch

from pidutils.models import random_t5


@pytest.fixture(scope="session")
def tiny_model():
    """A random T5 at the tiny test shape (fast enough for every test)."""
    return random_t5("t5-tiny", seed=0)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
