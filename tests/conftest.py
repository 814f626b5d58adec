"""Shared pytest fixtures."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("CORRSCAN_PROGRESS", "0")
os.environ.setdefault("MPLBACKEND", "Agg")

has_cuda = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not has_cuda, reason="needs a CUDA device")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    torch.manual_seed(0)
