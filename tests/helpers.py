"""Helpers the tests import (conftest holds only fixtures): the repository root and a fast test config."""

from __future__ import annotations

import os
from pathlib import Path

from kdflow.config import build_config

ROOT = Path(__file__).resolve().parent.parent
FASHION = Path("/usr/share/datasets/fashion-mnist")
# The session's smoke DAG (conftest.smoke_dag) and the container test's run of the same DAG
SMOKE_DAG_OVERRIDES = ["gate.max_latency_p95_ms=1000", "export.int8_min_agreement=0.95"]
SMOKE_DAG_WINDOW = "2026-11"
# Under pytest-xdist (`make test` runs two workers on this 2-core machine) each worker trains on one thread,
# so two workers never oversubscribe the cores; a plain `pytest` keeps two.
TEST_THREADS = (
    1 if os.environ.get("PYTEST_XDIST_WORKER") else 2
)  # a version label: recorded in lineage, selects no samples


def tiny_config(tmp: Path, **sections):
    """Config for fast tests: a real data subset, one short epoch, tracking off unless asked."""
    raw = {
        "data": {"val_size": 500, "train_subset": 1500, "test_subset": 500},
        "teacher": {"arch": "cnn-wide", "epochs": 1},
        "student": {"arch": "cnn-small", "epochs": 1},
        "train": {"batch_size": 64, "num_threads": TEST_THREADS, "warmup_epochs": 0},
        "evaluate": {"latency_repeats": 5, "throughput_repeats": 2, "latency_warmup": 1},
        "export": {"calibration_samples": 64},
        # robustness still runs where a test evaluates, on 100 images and two radii (the base: 1,000 and five)
        "adversarial": {"eval_samples": 100, "curve_eps": [0.0, 0.1]},
        "tracking": {"enabled": False},
        "storage": {"state_dir": str(tmp / "state")},
    }
    for k, v in sections.items():
        raw.setdefault(k, {}).update(v)
    return build_config(raw)


def experiment_config(name: str, tmp: Path, *extra: str):
    """An experiment YAML of configs/ at its smoke profile, isolated: tracking and reuse off, state in ``tmp``."""
    from kdflow.config import load_config

    base = ["tracking.enabled=false", "storage.reuse=false", f"storage.state_dir={tmp / 'state'}"]
    return load_config(ROOT / "configs" / name, "smoke", [*base, "train.num_threads=1", *extra])


def view_batch(prepared, cache, epoch: int, batch: int = 64, mix: dict | None = None):
    """The first training batch of ``epoch`` as the trainer draws it from a teacher cache's stored view (its mixing
    partners too, when ``mix``): (images, targets, sample indices)."""
    from kdflow.data import prepared as data

    return next(
        data.iterate(
            prepared.train,
            batch,
            data.Normalizer(prepared.mean, prepared.std),
            shuffle=True,
            augment=prepared.manifest["augmentation"],
            seed=epoch,
            views=cache.params_for_epoch(epoch),
            mix=mix,
            mix_views=cache.mix_for_epoch(epoch) if mix else None,
        )
    )
