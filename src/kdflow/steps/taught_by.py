"""The teacher a student is evaluated against: the one that taught it. With ``distill.extra_teachers`` that is the
ensemble of ``--teacher`` and the extra teachers (:class:`kdflow.training.teacher_ensemble.TeacherEnsemble`), so retention,
agreement, the transfer rate and the gate read the ensemble, not its first member.

``--teacher`` must be the teacher the student learnt from: the first teacher its distill step recorded (the
snapshot it learnt from, with ``distill.teacher_checkpoint``), or, with ``distill.assistant``, the teacher its
assistant learnt from; or the teacher step's checkpoint of that file (``teacher.source``: an ONNX file or a
checkpoint by path or URI, whose sha256 the step recorded). Another file (a teacher retrained in the same folder,
another run's teacher) is refused in one line: retention, agreement, the transfer rate and a gate on them would
read a teacher that never taught it.

The extra teachers are named by path in the config; the distill step recorded the sha256 of every teacher it
learnt from in the student's manifest. A config whose extra teachers are not those files (another count, a file
changed at its path) is refused in one line: the evaluation would be against teachers the student never saw.
"""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from kdflow.config import Config
from kdflow.errors import ConfigError
from kdflow.infra import checkpoints, step_manifest
from kdflow.infra.io import sha256_file


def recorded_teacher_digests(student_dir: Path) -> list[str] | None:
    """The sha256 of every teacher the student learnt from, in order (None: no record, e.g. a file by hand)."""
    manifest = step_manifest.read(student_dir) or {}
    digests = manifest.get("inputs", {}).get("teacher_sha256")
    return str(digests).split(",") if digests else None


def wrapped_source_digest(teacher_file: Path, digest: str) -> str | None:
    """The sha256 of the file a teacher step took as ``teacher.source`` (an ONNX file, a checkpoint by path or
    URI) when ``teacher_file`` (of sha256 ``digest``) is that step's unchanged checkpoint of it; None otherwise.
    A student distilled from the file itself learnt from this teacher, though the checkpoint has bytes of its own."""
    manifest = step_manifest.read(teacher_file.parent) or {}
    finished = manifest.get("step") == "train_teacher" and manifest.get("status") == step_manifest.COMPLETE
    if not finished or manifest.get("outputs", {}).get(teacher_file.name) != digest:  # not the file the step wrote
        return None
    return manifest.get("fingerprint", {}).get("teacher.source_sha256")


def check_teacher(teacher_file: Path, student_dir: Path) -> str:
    """``teacher_file``'s sha256, checked to be the teacher the student in ``student_dir`` learnt from (directly,
    or through its assistant in ``student_dir/assistant``); a student without a record (a file by hand) is not
    checked."""
    mine = sha256_file(teacher_file)
    recorded = recorded_teacher_digests(student_dir)
    if recorded is None:
        return mine
    taught = {recorded[0], *(recorded_teacher_digests(student_dir / "assistant") or [])[:1]}
    if mine not in taught and wrapped_source_digest(teacher_file, mine) not in taught:
        raise ConfigError(
            "--teacher",
            f"'{teacher_file}' is not the teacher the student in '{student_dir}' learnt from (sha256 {mine[:12]}, "
            f"recorded {recorded[0][:12]})",
            "evaluate against the teacher the student was distilled from, or distil the student again from this one",
        )
    return mine


def extra_teacher_digests(cfg: Config) -> list[str]:
    return [
        sha256_file(checkpoints.resolve_source(t.source, f"distill.extra_teachers[{i}].source"))
        for i, t in enumerate(cfg.distill.extra_teachers)
    ]


def check_extra_teachers(cfg: Config, student_dir: Path) -> list[str]:
    """The extra teachers' sha256, checked against the teachers the student's distill step recorded."""
    digests = extra_teacher_digests(cfg)
    recorded = recorded_teacher_digests(student_dir)
    if recorded is None:
        return digests
    fix = "evaluate with the config the student was distilled with"
    if len(recorded) != 1 + len(digests):
        raise ConfigError(
            "distill.extra_teachers",
            f"the student in '{student_dir}' learnt from {len(recorded)} teacher(s); this config names "
            f"{1 + len(digests)} (--teacher and {len(digests)} extra)",
            fix,
        )
    for i, (mine, theirs) in enumerate(zip(digests, recorded[1:], strict=True)):
        if mine != theirs:
            raise ConfigError(
                f"distill.extra_teachers[{i}].source",
                f"the file is not the teacher the student learnt from (sha256 {mine[:12]}, recorded {theirs[:12]})",
                fix,
            )
    return digests


def evaluation_teacher(
    cfg: Config, teacher: nn.Module, student_dir: Path, num_classes: int, input_shape: tuple[int, ...]
) -> tuple[nn.Module, list[str]]:
    """``teacher`` alone, or the ensemble with the extra teachers (and their sha256) combined by
    ``distill.ensemble``; loaded and checked before the evaluate step writes anything."""
    digests = check_extra_teachers(cfg, student_dir)
    if not cfg.distill.extra_teachers:
        return teacher, []
    from kdflow.steps.train import load_teacher
    from kdflow.training.teacher_ensemble import TeacherEnsemble

    extra = [
        load_teacher(t.source, num_classes, f"distill.extra_teachers[{i}].source", input_shape)[0]
        for i, t in enumerate(cfg.distill.extra_teachers)
    ]
    return TeacherEnsemble([teacher, *extra], cfg.distill.ensemble), digests
