"""A step opens its artifact store and its MLflow tracker once and reuses them for the whole step."""

from __future__ import annotations

import pytest
from helpers import tiny_config

from kdflow import steps
from kdflow.infra import storage, tracking

pytestmark = pytest.mark.integration


@pytest.fixture
def counted(monkeypatch):
    calls = {"open_store": 0, "check": 0, "Tracker": 0}
    real_open, real_tracker = storage.open_store, tracking.Tracker

    def open_store(root):
        calls["open_store"] += 1
        store = real_open(root)
        real_check = store.check

        def check():
            calls["check"] += 1
            return real_check()

        store.check = check
        return store

    class CountedTracker(real_tracker):
        def __init__(self, *a, **kw):
            calls["Tracker"] += 1
            super().__init__(*a, **kw)

    monkeypatch.setattr(storage, "open_store", open_store)
    monkeypatch.setattr(tracking, "Tracker", CountedTracker)
    return calls


def test_teacher_step_opens_store_and_tracker_once(tiny_data, tmp_path, counted):
    cfg = tiny_config(
        tmp_path,
        tracking={"enabled": True, "uri": f"sqlite:///{tmp_path}/mlflow.db"},
        storage={"root": str(tmp_path / "store")},
    )
    info = steps.provide_teacher(cfg, tiny_data, tmp_path / "teacher", steps.RunContext("run-1"))
    # provide_teacher trains, logs, uploads and registers: still one store check and one tracker.
    assert counted == {"open_store": 1, "check": 1, "Tracker": 1}
    assert info["registered_version"] == "1"
    uploaded = sorted(p.name for p in (tmp_path / "store" / "run-1").rglob("*") if p.is_file())
    assert "model.pt" in uploaded and "metrics.json" in uploaded
    assert info["artifact_uri"].rstrip("/").endswith("run-1/" + info["artifact_uri"].rstrip("/").split("/")[-1])
    assert "run-1" in info["artifact_uri"]


def test_untracked_local_step_opens_nothing(tiny_data, tmp_path, counted):
    steps.train(tiny_config(tmp_path), "scratch", tiny_data, tmp_path / "scratch")
    assert counted == {"open_store": 0, "check": 0, "Tracker": 0}
