"""Which teacher to distil from: the final weights, the best validation epoch, or a snapshot of epoch N.

Early-stopped teachers can suit small students better (Cho & Hariharan, ICCV 2019): the teacher step
saves ``model-best_val.pt`` always and ``model-epoch<N>.pt`` for ``teacher.snapshot_epochs``; the distill
step takes the one ``distill.teacher_checkpoint`` names from the same directory.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch.nn as nn

from kdflow.data import prepared as data
from kdflow.errors import ConfigError
from kdflow.infra import checkpoints

if TYPE_CHECKING:
    from kdflow.steps.train import TrainingJob

TEACHER_CHECKPOINTS = {"final": "model.pt", "best_val": "model-best_val.pt"}


def teacher_checkpoint_file(which: str) -> str:
    """distill.teacher_checkpoint -> the file next to the teacher's model.pt."""
    return TEACHER_CHECKPOINTS.get(which) or f"model-epoch{which.split(':', 1)[1]}.pt"


def save_variant(model: nn.Module, state: dict, arch: str, prepared: data.PreparedData, path: Path) -> None:
    import copy

    twin = copy.deepcopy(model).cpu()
    twin.load_state_dict(state)
    checkpoints.save_model(
        twin, arch, prepared.num_classes, prepared.in_channels, prepared.image_size[0], path, extra={"role": "teacher"}
    )


def with_snapshots(
    job: TrainingJob, model: nn.Module, prepared: data.PreparedData, log: Callable[[dict], None] | None
) -> Callable[[dict], None] | None:
    """Save the teacher after each of ``teacher.snapshot_epochs`` (for distill.teacher_checkpoint=epoch:N)."""
    epochs = set(job.cfg.teacher.snapshot_epochs) if job.role == "teacher" else set()
    if not epochs:
        return log

    def on_epoch(row: dict) -> None:
        if log is not None:
            log(row)
        if row["epoch"] in epochs:
            path = job.out / teacher_checkpoint_file(f"epoch:{row['epoch']}")
            save_variant(model, model.state_dict(), job.arch, prepared, path)

    return on_epoch


def snapshot_files(out: Path) -> list[Path]:
    """The teacher's epoch snapshots written so far (kept with its checkpoint by :mod:`kdflow.infra.running`)."""
    return sorted(out.glob(teacher_checkpoint_file("epoch:*")))


def chosen_teacher(teacher_path: str, which: str) -> str:
    """The checkpoint ``distill.teacher_checkpoint`` names, next to a local teacher's model.pt."""
    if which == "final":
        return teacher_path
    local = Path(teacher_path)
    if not local.is_file():
        raise ConfigError(
            "distill.teacher_checkpoint",
            f"'{which}' needs a local teacher directory, got '{teacher_path}'",
            "pass the train-teacher output directory's model.pt, or set distill.teacher_checkpoint=final",
        )
    variant = local.with_name(teacher_checkpoint_file(which))
    if not variant.is_file():
        raise ConfigError(
            "distill.teacher_checkpoint",
            f"the teacher in '{local.parent}' has no {which} checkpoint ({variant.name})",
            "set teacher.snapshot_epochs to include that epoch and retrain the teacher, or choose final/best_val",
        )
    return str(variant)
