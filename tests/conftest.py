"""Shared fixtures: a small real Fashion-MNIST subset prepared once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from kdflow.config import build_config
from kdflow.data import prepare

ROOT = Path(__file__).resolve().parent.parent
FASHION = Path("/usr/share/datasets/fashion-mnist")

torch.set_num_threads(2)
os.environ.setdefault("MPLBACKEND", "Agg")


def tiny_config(tmp: Path, **sections):
    """Config for fast tests: a real data subset, one short epoch, tracking off unless asked."""
    raw = {
        "data": {"val_size": 500, "train_subset": 1500, "test_subset": 500},
        "teacher": {"arch": "cnn-wide", "epochs": 1},
        "student": {"arch": "cnn-small", "epochs": 1},
        "train": {"batch_size": 64, "num_threads": 2, "warmup_epochs": 0},
        "evaluate": {"latency_repeats": 5, "throughput_repeats": 2, "latency_warmup": 1},
        "export": {"calibration_samples": 64},
        "tracking": {"enabled": False},
        "storage": {"state_dir": str(tmp / "state")},
    }
    for k, v in sections.items():
        raw.setdefault(k, {}).update(v)
    return build_config(raw)


@pytest.fixture(scope="session")
def fashion_available() -> Path:
    assert (FASHION / "train-images-idx3-ubyte.gz").is_file(), \
        "Fashion-MNIST missing: `make test` installs the Debian package dataset-fashion-mnist"
    return FASHION


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory, fashion_available) -> Path:
    d = tmp_path_factory.mktemp("tiny_data")
    cfg = tiny_config(d)
    prepare(cfg.data, d / "prepared")
    return d / "prepared"
