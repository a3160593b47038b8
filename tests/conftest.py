"""Shared fixtures: small random models, seeded, on the CPU."""
from __future__ import annotations

import pytest
import torch

from pidutils import data
from pidutils.models import random_t5
from pidutils.tokenizer import train_tokenizer


@pytest.fixture(scope="session")
def tiny_model():
    """A random T5 at the tiny test shape (fast enough for every test)."""
    return random_t5("t5-tiny", seed=0)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def corpus():
    """A small synthetic dialogue set (200 training dialogues, 5 each for validation and test)."""
    return data.make_dataset(train=200, validation=5, test=5, seed=3)


@pytest.fixture(scope="session")
def tokenizer(corpus):
    """A tokenizer trained on ``corpus``, with the slot names."""
    return train_tokenizer(list(corpus["train"]["dialogue"]) + [" ".join(data.SLOTS)] * 10, 600)


@pytest.fixture(scope="session")
def model(tokenizer):
    """A random tiny T5 with ``tokenizer``'s vocabulary, in eval mode."""
    m = random_t5("t5-tiny")
    m.resize_token_embeddings(len(tokenizer))
    return m.eval()
