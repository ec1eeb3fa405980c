"""The distillation step: the frozen teacher (through an assistant, if any) into the student."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.nn as nn

from kdflow.config import Config
from kdflow.data import prepared as data
from kdflow.errors import CheckpointError
from kdflow.infra import checkpoints, step_manifest
from kdflow.infra.io import sha256_file
from kdflow.models.inputs import Selected, check_same_inputs
from kdflow.steps import results
from kdflow.steps.context import PathArg, RunContext
from kdflow.steps.preflight import check_black_box
from kdflow.steps.results import TrainResult
from kdflow.steps.teacher_checkpoints import TEACHER_CHECKPOINTS, chosen_teacher
from kdflow.steps.timing import timed
from kdflow.steps.train import STEP_NAMES, TrainingJob, load_teacher, train_model, training_attack


def _teacher_lineage(cfg: Config, teacher_path: str, teacher_arch: str) -> dict[str, str]:
    local = Path(teacher_path)
    final = local.exists() and local.name == TEACHER_CHECKPOINTS["final"]  # a snapshot is not the logged model
    info: dict[str, Any] = dict((results.read(local.parent, TrainResult) if final else None) or {})
    return {
        "kdflow.teacher_checkpoint": cfg.distill.teacher_checkpoint,
        "kdflow.teacher_arch": teacher_arch,
        "kdflow.teacher_model_id": info.get("model_id", ""),
        "kdflow.teacher_model_uri": info.get("model_uri", teacher_path),
        "kdflow.teacher_version": str(info.get("registered_version", "")),
        "kdflow.method": cfg.distill.method,
        "kdflow.assistant_arch": cfg.distill.assistant.arch if cfg.distill.assistant else "",
    }


def _check_teacher_step(teacher: Path) -> None:
    """A teacher file in a step directory must be one that step wrote, unchanged (never a file an earlier run
    left there); a file made by hand or a URI has no manifest to check."""
    if not teacher.is_file():
        return
    manifest = step_manifest.verify(teacher.parent, step_manifest.MODEL_STEPS, "--teacher", required=False)
    if manifest is not None and teacher.name not in manifest["outputs"]:
        raise CheckpointError(
            "--teacher",
            f"'{teacher}' is not an output of the step in {teacher.parent}",
            "pass a checkpoint that step wrote, or retrain the teacher with the snapshots you need",
        )


def _train_assistant(
    cfg: Config, data_dir: PathArg, teacher_path: str | Path, out: Path, ctx: RunContext | None, fresh: bool
) -> Path:
    """The first link of the chain: the teacher distilled into the assistant, by the student's recipe."""
    ta = cfg.distill.assistant
    assert ta is not None
    raw = cfg.to_dict()
    raw["student"].update(arch=ta.arch, epochs=ta.epochs if ta.epochs is not None else cfg.epochs_for("student"))
    raw["distill"].update(assistant=None, features=[])  # feature taps name the student's modules, not the assistant's
    distill(Config.model_validate(raw), data_dir, teacher_path, out, ctx, fresh, role="assistant")
    return out / "model.pt"


@timed(lambda b: STEP_NAMES[b.arguments["role"]])
def distill(
    cfg: Config,
    data_dir: PathArg,
    teacher_path: str | Path,  # a checkpoint path, or an s3:// or models:/ URI
    out_dir: PathArg,
    ctx: RunContext | None = None,
    fresh: bool = False,
    role: str = "distill",
) -> TrainResult | None:
    """Distil the frozen teacher (plus any ``distill.extra_teachers``) into ``student.arch``.

    With ``distill.assistant`` the teacher is first distilled into the assistant (``OUT/assistant``), which
    then teaches the student.
    """
    from kdflow.steps.teacher_cache import cache_factory
    from kdflow.training.objective import DistillObjective

    manifest = data.load_manifest(data_dir)  # a missing manifest is a one-line error
    num_classes, input_shape = manifest["num_classes"], tuple(manifest["input_shape"])
    which = cfg.distill.teacher_checkpoint
    if cfg.distill.assistant is not None:
        teacher_path = _train_assistant(cfg, data_dir, teacher_path, Path(out_dir) / "assistant", ctx, fresh)
        which = "final"  # the student learns from the assistant's final weights
    teacher_path = chosen_teacher(str(teacher_path), which)
    _check_teacher_step(Path(teacher_path))
    teacher, teacher_meta = load_teacher(str(teacher_path), num_classes, "teacher", input_shape)
    extra = [
        load_teacher(t.source, num_classes, f"distill.extra_teachers[{i}].source", input_shape)[0]
        for i, t in enumerate(cfg.distill.extra_teachers)
    ]
    teachers = [teacher, *extra]
    check_black_box(cfg, teachers)
    if "inputs" in manifest or any(isinstance(t, Selected) for t in teachers):  # the columns each teacher reads
        for i, t in enumerate(teachers):
            check_same_inputs(t, manifest.get("inputs"), "--teacher" if i == 0 else f"distill.extra_teachers[{i - 1}]")

    if cfg.distill.data_free:
        from kdflow.steps.data_free import distill_data_free

        lineage = _teacher_lineage(cfg, str(teacher_path), teacher_meta["arch"])
        return distill_data_free(
            cfg, Path(data_dir), teacher, str(teacher_path), lineage, Path(out_dir), ctx or RunContext(), fresh
        )

    def objective(model: nn.Module, prepared: data.PreparedData) -> nn.Module:
        return DistillObjective(
            teachers,
            model,
            cfg.distill,
            prepared.input_shape,
            prepared.num_classes,
            training_attack(cfg, role, prepared),
            teacher_channels_last=bool(cfg.teacher.channels_last),
        )

    sources = [str(teacher_path), *(t.source for t in cfg.distill.extra_teachers)]
    digests = [sha256_file(checkpoints.resolve_source(s, "teacher")) for s in sources]  # resolved once, above
    job = TrainingJob(
        cfg,
        role,
        cfg.student.arch,
        Path(data_dir),
        Path(out_dir),
        ctx or RunContext(),
        objective,
        _teacher_lineage(cfg, str(teacher_path), teacher_meta["arch"]),
        cache_factory(cfg, teachers, digests) if cfg.distill.cache else None,
        teacher_digest=",".join(digests),
        fresh=fresh,
        transfer_set=cfg.distill.unlabeled,
    )
    return train_model(job)
