"""distill.teacher_checkpoint: final, best_val or a snapshot of epoch N, saved by the teacher step."""

from __future__ import annotations

import pytest
from helpers import tiny_config

from kdflow import steps
from kdflow.config import build_config
from kdflow.errors import ConfigError
from kdflow.infra.io import sha256_file

pytestmark = pytest.mark.integration


def test_snapshot_not_saved_is_a_config_error():
    with pytest.raises(ConfigError, match=r"teacher.snapshot_epochs=\[3\]"):
        build_config({"distill": {"teacher_checkpoint": "epoch:3"}})
    with pytest.raises(ConfigError, match="teacher_checkpoint"):
        build_config({"distill": {"teacher_checkpoint": "halfway"}})
    build_config({"distill": {"teacher_checkpoint": "epoch:3"}, "teacher": {"snapshot_epochs": [3]}})


def test_distil_from_a_snapshot_of_the_teacher(tiny_data, tmp_path):
    cfg = tiny_config(tmp_path, teacher={"epochs": 2, "snapshot_epochs": [1]})
    steps.train(cfg, "teacher", tiny_data, tmp_path / "teacher")
    final, best, first = (tmp_path / "teacher" / n for n in ("model.pt", "model-best_val.pt", "model-epoch1.pt"))
    assert final.is_file() and best.is_file() and first.is_file()
    assert sha256_file(first) != sha256_file(final)

    from_snapshot = tiny_config(tmp_path, distill={"teacher_checkpoint": "epoch:1"}, teacher={"snapshot_epochs": [1]})
    info = steps.distill(from_snapshot, tiny_data, final, tmp_path / "student")
    assert info["lineage"]["kdflow.teacher_model_uri"].endswith("model-epoch1.pt")
    assert info["fingerprint"]["teacher_digest"] == sha256_file(first)

    unsaved = tiny_config(
        tmp_path, distill={"teacher_checkpoint": "epoch:2"}, teacher={"epochs": 2, "snapshot_epochs": [2]}
    )  # a valid config, but the teacher given was trained without that snapshot
    with pytest.raises(ConfigError, match="no epoch:2 checkpoint"):
        steps.distill(unsaved, tiny_data, final, tmp_path / "student2")

    # evaluated against the snapshot it learnt from: the teacher folder's epoch-1 file, accepted
    summary = steps.evaluate_models(
        from_snapshot, tiny_data, tmp_path / "teacher", None, tmp_path / "student", tmp_path / "eval"
    )
    assert summary["teacher_checkpoint"] == "model-epoch1.pt"


def test_teacher_assistant_chain(tiny_data, tmp_path):
    """distill.assistant: the teacher teaches the assistant, the assistant teaches the student."""
    cfg = tiny_config(tmp_path, distill={"assistant": {"arch": "cnn-16x2", "epochs": 1}})
    teacher = tmp_path / "teacher"
    steps.train(tiny_config(tmp_path), "teacher", tiny_data, teacher)
    info = steps.distill(cfg, tiny_data, teacher / "model.pt", tmp_path / "student")
    assistant = tmp_path / "student" / "assistant" / "model.pt"
    assert assistant.is_file()
    assert info["fingerprint"]["teacher_digest"] == sha256_file(assistant)  # the student learnt from the assistant
    assert (
        info["lineage"]["kdflow.assistant_arch"] == "cnn-16x2" and info["lineage"]["kdflow.teacher_arch"] == "cnn-16x2"
    )
    from kdflow.infra import checkpoints

    assert checkpoints.load_model(str(assistant))[1]["arch"] == "cnn-16x2"

    # evaluated against the teacher that taught its assistant, or the assistant itself: the teachers it learnt from
    for taught_by in (teacher, tmp_path / "student" / "assistant"):
        out = tmp_path / f"eval-{taught_by.name}"
        assert steps.evaluate_models(cfg, tiny_data, taught_by, None, tmp_path / "student", out)["models"]["student"]
    # another teacher (another seed, the same recipe) never taught it: refused before anything is written
    other = tmp_path / "other-teacher"
    steps.train(tiny_config(tmp_path, train={"seed": 1}), "teacher", tiny_data, other)
    with pytest.raises(ConfigError, match=r"--teacher: .*other-teacher/model.pt' is not the teacher the student"):
        steps.evaluate_models(cfg, tiny_data, other, None, tmp_path / "student", tmp_path / "eval-other")
    assert not (tmp_path / "eval-other").exists()
    with pytest.raises(Exception, match="distill.assistant.arch"):
        steps.prep(tiny_config(tmp_path, distill={"assistant": {"arch": "nonesuch"}}), tmp_path / "p")
