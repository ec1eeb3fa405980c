"""The step manifest binds a directory to one step identity (kdflow.infra.step_manifest)."""

from __future__ import annotations

import json

import pytest

from kdflow.errors import CheckpointError, ConfigError
from kdflow.infra import step_manifest as sm

pytestmark = pytest.mark.unit
FP_A = {"student.arch": "cnn-small", "data_digest": "d1"}
FP_B = {"student.arch": "mlp", "data_digest": "d1"}


def _finish(out, files: dict[str, str], step="train_teacher", fp=FP_A):
    sm.claim(out, step, fp)
    for name, text in files.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    return sm.complete(out, {"data": {"digest": "d1"}})


def test_complete_lists_every_output_with_its_sha_and_not_the_resume_state(tmp_path):
    (tmp_path / "train_state").mkdir()
    (tmp_path / "train_state" / "checkpoint.pt").write_text("state")
    manifest = _finish(tmp_path, {"model.pt": "w", "plots/a.png": "p", ".model.pt.tmp": "half"})
    assert manifest["status"] == "complete" and sorted(manifest["outputs"]) == ["model.pt", "plots/a.png"]
    assert manifest["inputs"] == {"data": {"digest": "d1"}} and manifest["fingerprint"] == FP_A
    assert sm.verify(tmp_path, ("train_teacher",), "--teacher")["outputs"] == manifest["outputs"]


def test_another_fingerprint_is_refused_naming_the_field_and_fresh_removes_the_old_outputs(tmp_path):
    _finish(tmp_path, {"model.pt": "w", "model-epoch2.pt": "old snapshot"})
    with pytest.raises(ConfigError, match=r"student.arch 'cnn-small' -> 'mlp'.*--fresh"):
        sm.claim(tmp_path, "train_teacher", FP_B)
    assert (tmp_path / "model-epoch2.pt").is_file()  # refused: nothing touched
    assert sm.claim(tmp_path, "train_teacher", FP_B, fresh=True) == "replace"
    assert not (tmp_path / "model-epoch2.pt").exists() and not (tmp_path / "model.pt").exists()
    assert sm.read(tmp_path)["status"] == "in_progress" and sm.read(tmp_path)["fingerprint"] == FP_B


def test_another_step_into_the_same_directory_is_refused(tmp_path):
    _finish(tmp_path, {"model.pt": "w"})
    with pytest.raises(ConfigError, match="outputs of step train_teacher"):
        sm.claim(tmp_path, "evaluate", None)


def test_an_unfinished_run_of_the_same_identity_resumes_with_its_files(tmp_path):
    sm.claim(tmp_path, "train_teacher", FP_A)
    (tmp_path / "model-epoch1.pt").write_text("snapshot of the interrupted run")
    assert sm.claim(tmp_path, "train_teacher", FP_A) == "resume"
    assert (tmp_path / "model-epoch1.pt").is_file()


def test_a_finished_step_run_again_starts_from_an_empty_directory(tmp_path):
    _finish(tmp_path, {"model.pt": "w", "model-best_val.pt": "best of the earlier run"})
    assert sm.claim(tmp_path, "train_teacher", FP_A) == "replace"
    assert sm.output_files(tmp_path) == []


def test_files_without_a_manifest_are_never_overwritten_silently(tmp_path):
    (tmp_path / "notes.txt").write_text("a user's file")
    with pytest.raises(ConfigError, match="without a step manifest.*choose an empty or new directory"):
        sm.claim(tmp_path, "prep_data", None, fresh=True)  # --fresh never deletes what kdflow did not write
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "step.json").write_text("{}")
    (legacy / "model-epoch3.pt").write_text("old")
    with pytest.raises(ConfigError, match="earlier kdflow.*--fresh"):
        sm.claim(legacy, "train_teacher", FP_A)
    sm.claim(legacy, "train_teacher", FP_A, fresh=True)
    assert sm.output_files(legacy) == []


def test_a_nested_step_is_neither_listed_nor_removed_by_its_parent(tmp_path):
    _finish(tmp_path / "assistant", {"model.pt": "assistant"}, step="distill_assistant")
    manifest = _finish(tmp_path, {"model.pt": "student"}, step="distill_student")
    assert list(manifest["outputs"]) == ["model.pt"]
    sm.claim(tmp_path, "distill_student", FP_A)
    assert (tmp_path / "assistant" / "model.pt").read_text() == "assistant"


@pytest.mark.parametrize(
    "damage, words",
    [
        (lambda d: (d / "model.pt").write_text("swapped"), "changed since the step finished"),
        (lambda d: (d / "model.pt").unlink(), "missing since the step finished"),
        (lambda d: sm.claim(d, "train_teacher", FP_A), "never finished"),
        (lambda d: (d / sm.MANIFEST).write_text("{not json"), "unreadable step manifest"),
        (lambda d: (d / sm.MANIFEST).unlink(), "has no step-manifest.json"),
    ],
)
def test_a_consumer_refuses_a_damaged_or_unfinished_step(tmp_path, damage, words):
    _finish(tmp_path, {"model.pt": "w"})
    damage(tmp_path)
    with pytest.raises(CheckpointError, match=words):
        sm.verify(tmp_path, ("train_teacher",), "--teacher")


def test_a_consumer_refuses_a_directory_of_another_step(tmp_path):
    _finish(tmp_path, {"evaluation.json": json.dumps({})}, step="evaluate", fp=None)
    with pytest.raises(CheckpointError, match="holds step evaluate, not distill_student"):
        sm.verify(tmp_path, ("distill_student",), "--student")


def test_out_must_be_a_directory(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a directory"):
        sm.claim(tmp_path / "file", "prep_data")
    with pytest.raises(ConfigError, match="is a file, not a directory"):
        sm.claim(tmp_path / "file" / "below", "prep_data")


def test_a_refused_run_withdraws_its_claim_and_the_directories_it_made(tmp_path):
    out = tmp_path / "run" / "teacher"
    sm.claim(out, "train_teacher", FP_A)
    sm.withdraw_open_claims()
    assert not (tmp_path / "run").exists()
    done = tmp_path / "done"
    _finish(done, {"model.pt": "w"})
    sm.withdraw_open_claims()  # a completed step is never withdrawn
    assert sm.verify(done, ("train_teacher",), "--teacher")
