"""One orchestration of the steps in DAG order, on local directories: the CLI's ``kdflow run`` and the tests.

The KFP pipeline wires the same step functions as components; this is the same DAG without KFP.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kdflow.config import Config
from kdflow.errors import ConfigError
from kdflow.infra.onnx_file import is_onnx
from kdflow.steps.baselines import train_transfer_baselines, uses_transfer_set
from kdflow.steps.context import PathArg, RunContext, start_pipeline
from kdflow.steps.distill import distill
from kdflow.steps.evaluation import evaluate_models
from kdflow.steps.preflight import check_run
from kdflow.steps.prep import prep
from kdflow.steps.results import TrainResult
from kdflow.steps.train import load_teacher, train
from kdflow.training.distributed import info_from_env


@dataclass(frozen=True)
class Layout:
    """Where ``kdflow run --out OUT`` puts each step's outputs: the directories the step commands take."""

    data: Path
    teacher: Path
    scratch: Path
    student: Path
    evaluation: Path
    given_teacher: Path
    baselines: Path

    @classmethod
    def under(cls, out: Path) -> Layout:
        names = ("data", "teacher", "scratch", "student", "evaluation", "teacher_given", "baselines")
        return cls(*(out / name for name in names))


def _given_teacher(source: str, data_dir: Path, target: Path) -> Path:
    """A teacher passed by path or URI, written as a step directory so evaluate can read it like a trained one.
    A kdflow checkpoint is copied byte for byte: evaluate checks it is the file the student learnt from (the
    sha256 its distill step recorded). An ONNX file is saved as a kdflow checkpoint holding its bytes, as the
    teacher step saves ``teacher.source``; the student is then distilled from that file."""
    from kdflow.data.prepared import load_manifest
    from kdflow.infra import checkpoints
    from kdflow.infra.io import atomic_copy

    if not is_onnx(source):  # distill loaded and checked it already
        atomic_copy(checkpoints.resolve_source(source, "--teacher"), target / "model.pt")
        return target
    manifest = load_manifest(data_dir)
    model, meta = load_teacher(source, manifest["num_classes"], "teacher", tuple(manifest["input_shape"]))
    checkpoints.save_model(
        model,
        meta["arch"],
        meta["num_classes"],
        meta["in_channels"],
        meta["image_size"],
        target / "model.pt",
        extra={"role": "teacher", "source": source},
    )
    return target


def run_all(
    cfg: Config,
    out: PathArg,
    ctx: RunContext,
    data_dir: PathArg | None = None,
    teacher: str | None = None,
    scratch: bool = False,
    fresh: bool = False,
) -> dict | None:
    """prep (unless ``data_dir``), teacher (unless given), scratch (if asked), distill, the transfer set's
    baselines (with scratch, when the run uses a transfer set), evaluate.

    Everything that can be checked is checked before the first byte is written (a failure leaves ``out``
    as it was). Returns the evaluation summary; None on DDP ranks other than 0.
    """
    layout = Layout.under(Path(out))
    if info_from_env().enabled and (not data_dir or not teacher or scratch):
        raise ConfigError(
            "--nproc",
            "a distributed run distils alone",
            "run prep and train-teacher first, then `kdflow distill --nproc N --data D --teacher T`",
        )
    check_run(cfg, teacher, Path(data_dir) if data_dir else None)
    start_pipeline(cfg, ctx)  # the store and the tracking server answer
    data = Path(data_dir) if data_dir else layout.data
    if not data_dir:
        prep(cfg, data, ctx)
    teacher_dir = None
    if not teacher:
        train(cfg, "teacher", data, layout.teacher, ctx, fresh)
        teacher_dir, teacher = layout.teacher, str(layout.teacher / "model.pt")
    elif is_onnx(teacher):  # distil from the file evaluate reads: its check compares their sha256
        teacher_dir = _given_teacher(teacher, data, layout.given_teacher)
        teacher = str(teacher_dir / "model.pt")
    scratch_dir = layout.scratch if scratch else None
    if scratch_dir is not None:
        train(cfg, "scratch", data, scratch_dir, ctx, fresh)
    distilled: TrainResult | None = distill(cfg, data, teacher, layout.student, ctx, fresh)
    if distilled is None:
        return None
    baselines = None
    if scratch_dir is not None and uses_transfer_set(cfg, data):  # what the transfer set's gain is made of
        train_transfer_baselines(cfg, data, teacher, scratch_dir, layout.baselines, ctx, fresh)
        baselines = layout.baselines
    if teacher_dir is None:
        teacher_dir = _given_teacher(teacher, data, layout.given_teacher)
    return evaluate_models(cfg, data, teacher_dir, scratch_dir, layout.student, layout.evaluation, ctx, baselines)
