"""Shared fixtures: a small real Fashion-MNIST subset prepared once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from helpers import FASHION, tiny_config

from kdflow.data import prepare

torch.set_num_threads(2)
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def fashion_available() -> Path:
    assert (FASHION / "train-images-idx3-ubyte.gz").is_file(), (
        "Fashion-MNIST missing: `make test` installs the Debian package dataset-fashion-mnist"
    )
    return FASHION


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory, fashion_available) -> Path:
    d = tmp_path_factory.mktemp("tiny_data")
    cfg = tiny_config(d)
    prepare(cfg.data, d / "prepared")
    return d / "prepared"
