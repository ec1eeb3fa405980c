"""Shared fixtures: a small real Fashion-MNIST subset prepared once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from helpers import FASHION, SMOKE_DAG_OVERRIDES, SMOKE_DAG_WINDOW, tiny_config

from kdflow.data.prepared import prepare

TIERS = ("unit", "integration", "e2e")

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


def pytest_collection_modifyitems(config, items) -> None:
    """Every test carries exactly one tier marker (unit, integration, e2e): `make test` runs the tiers in
    order, so a test without one would run in none of them, and one with two would run twice."""
    bad = []
    for item in items:
        tiers = {m.name for m in item.iter_markers() if m.name in TIERS}
        if len(tiers) != 1:
            bad.append(f"{item.nodeid}: {sorted(tiers) or 'no tier marker'}")
    if bad:
        raise pytest.UsageError(
            "each test needs exactly one tier marker (pytest.mark.unit, .integration or .e2e):\n  " + "\n  ".join(bad)
        )


@pytest.fixture(scope="session")
def smoke_dag(tmp_path_factory) -> dict:
    """The smoke DAG run once by the local subprocess runner (warm worker), with its own state folder and
    sqlite MLflow: test_e2e checks its wiring, test_container compares the same DAG in containers to it."""
    from pipelines.runner import run_local

    work = tmp_path_factory.mktemp("smoke_dag")
    with pytest.MonkeyPatch.context() as m:
        m.chdir(work)  # state dir and pipeline root land in the temp dir
        m.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{work}/mlflow.db")
        return run_local(
            profile="smoke", root=str(work / "root"), data_window=SMOKE_DAG_WINDOW, overrides=SMOKE_DAG_OVERRIDES
        )
