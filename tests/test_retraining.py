"""Scheduled retraining for real: two successive local pipeline runs on growing data windows.

The first run sets the champion; the retrained challenger (more data) is promoted only because it beats
the champion on the release split, which neither window trained or selected on; the champion of the first window is kept as previous_champion.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def _left_in(tmp: Path) -> set[Path]:
    """What a run of the DAG could leave in /tmp: kfp's per-task folder with its component source, the
    promote step's scratch folder."""
    return {p.parent for p in tmp.glob("tmp.*/ephemeral_component.py")} | set(tmp.glob("promote-*"))


def test_two_windows_champion_logic(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from pipelines.runner import run_local

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    common = [
        "data.train_subset=null",
        "data.val_size=500",
        "train.batch_size=32",
        "teacher.epochs=2",
        "student.epochs=2",
        "gate.min_retention=0.5",
        "gate.min_accuracy=0.5",
        "gate.max_latency_p95_ms=1000",
        "export.int8_min_agreement=0.95",
        "adversarial.evaluate=false",  # robustness is not what this test is about (test_adversarial, smoke DAG)
    ]
    tmp = Path(tempfile.gettempdir())
    left_before = _left_in(tmp)
    first = run_local(profile="smoke", root=str(tmp_path / "root"), data_window="0:2000", overrides=common)
    assert first["promotion"], first["export"]["gate"]
    assert first["promotion"]["promoted"] and first["promotion"]["reason"] == "first champion"
    second = run_local(profile="smoke", root=str(tmp_path / "root"), data_window="0:8000", overrides=common)
    client = MlflowClient(uri)
    acc1 = first["evaluation"]["models"]["student"]["accuracy"]
    acc2 = second["evaluation"]["models"]["student"]["accuracy"]
    decision = second["promotion"]
    champion = client.get_model_version_by_alias("kd-student", "champion")
    assert acc2 > acc1, "more data should have produced a better student"
    assert decision["promoted"] is True
    assert str(champion.version) == decision["version"]
    previous = client.get_model_version_by_alias("kd-student", "previous_champion")
    assert str(previous.version) == first["promotion"]["version"]
    windows = {v.version: v.tags.get("kdflow.data_digest") for v in client.search_model_versions("name='kd-student'")}
    assert len(set(windows.values())) == 2  # each version records the digest of its own window

    # the next scheduled run on the unchanged window: every training step reuses its model (storage.reuse),
    # evaluation and promotion run again, and the same student is no challenger to itself
    third = run_local(profile="smoke", root=str(tmp_path / "root"), data_window="0:8000", overrides=common)
    assert set(third["reused"]) == {"train_teacher", "train_student_scratch", "distill_student"}
    assert set(third["reused"].values()) == {second["evaluation"]["lineage"]["pipeline_run_id"]}
    assert third["evaluation"]["models"]["student"]["accuracy"] == acc2
    assert third["promotion"] and third["promotion"]["promoted"] is False
    assert str(client.get_model_version_by_alias("kd-student", "champion").version) == decision["version"]
    assert _left_in(tmp) <= left_before  # three runs, no scratch folder left behind
