"""Shared fixtures: a small real Fashion-MNIST subset prepared once per session."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
import torch
from helpers import FASHION, SMOKE_DAG_OVERRIDES, SMOKE_DAG_WINDOW, TEST_THREADS, tiny_config

from kdflow.data.prepared import prepare

TIERS = ("unit", "integration", "e2e")

torch.set_num_threads(TEST_THREADS)
if os.environ.get("PYTEST_XDIST_WORKER"):
    # the steps' subprocesses inherit these: one thread where no config names a count, and threads that sleep
    # (not spin) while they wait, so a step configured for two threads does not starve the other worker
    os.environ["OMP_NUM_THREADS"] = str(TEST_THREADS)
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
os.environ.setdefault("MPLBACKEND", "Agg")
# the MLflow stores tests make start from one cached empty schema (kdflow.infra.mlflow_store), kept out of ~/.cache
os.environ.setdefault("KDFLOW_CACHE_DIR", str(Path(tempfile.gettempdir()) / f"kdflow-test-cache-{os.getuid()}"))


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
    items.sort(key=lambda item: LONGEST_FIRST.get(item.path.name, len(LONGEST_FIRST)))  # stable: files stay whole


# The slowest files of the integration and e2e tiers by their measured wall (--durations, 2026-12-01), longest first:
# pytest-xdist (--dist loadfile --no-loadscope-reorder, scripts/test_tiers.py) hands whole files out in this
# order, the next one to a worker once two tests or fewer of its files are left, so the longest start first
# and the short ones fill the gaps at the end. Files not listed keep their order, after these.
LONGEST_FIRST = {
    name: rank
    for rank, name in enumerate(
        [
            "test_container.py",  # e2e: ~130 s, the smoke DAG in containers (and the session smoke DAG it compares to)
            "test_faults.py",  # integration: ~105 s
            "test_adversarial.py",  # e2e: ~100 s, the ARD and DFAD DAGs and CLIs
            "test_tune.py",  # e2e: ~65 s
            "test_retraining.py",  # e2e: ~57 s, three DAG runs
            "test_integration_stack.py",  # e2e ~50 s, integration ~15 s
            "test_readme_cli.py",  # e2e: ~50 s
            "test_text.py",  # integration: ~44 s, the MiniLM view at prep, two text students exported
            "test_named_inputs_dag.py",  # e2e: ~35 s, the multiview and text DAGs
            "test_autodistill_local.py",  # e2e: ~35 s
            "test_ddp.py",  # integration: ~30 s
            "test_warm_worker.py",  # integration: ~23 s
            "test_release_safety.py",  # integration: ~20 s
            "test_compile_teacher.py",  # integration: ~17 s
            "test_e2e.py",  # e2e: ~13 s (and the session smoke DAG, when test_container has not made it yet)
            "test_lease.py",
            "test_imagefolder_dag.py",
            "test_mlflow_store.py",
            "test_components.py",
            "test_bad_input.py",
            "test_tune_final.py",
            "test_multiview.py",
            "test_reuse.py",
        ]
    )
}


@pytest.fixture(scope="session")
def smoke_dag(tmp_path_factory) -> dict:
    """The smoke DAG run once by the local subprocess runner (warm worker), with its own state folder and
    sqlite MLflow: test_e2e checks its wiring, test_container compares the same DAG in containers to it.

    Once per `make test`, not once per xdist worker: the first worker to ask runs it under a file lock and
    leaves its summary beside the workers' temp dirs; the other reads it."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return _run_smoke_dag(tmp_path_factory.mktemp("smoke_dag"))
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent / "smoke_dag.json"
    with FileLock(f"{shared}.lock"):
        if shared.is_file():
            return json.loads(shared.read_text())
        summary = _run_smoke_dag(tmp_path_factory.mktemp("smoke_dag"))
        shared.write_text(json.dumps(summary))
        return json.loads(shared.read_text())  # what the other worker gets, so both see the same types


def _run_smoke_dag(work: Path) -> dict:
    from pipelines.runner import run_local

    with pytest.MonkeyPatch.context() as m:
        m.chdir(work)  # state dir and pipeline root land in the temp dir
        m.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{work}/mlflow.db")
        return run_local(
            profile="smoke", root=str(work / "root"), data_window=SMOKE_DAG_WINDOW, overrides=SMOKE_DAG_OVERRIDES
        )
