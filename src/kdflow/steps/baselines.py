"""The transfer set's baselines: what a distilled student's gain over its scratch twin is made of.

With an unlabeled transfer set the distilled student learns from the teacher AND from more images than its
twin saw; two more students tell the two apart (the third and fourth rows of the evaluation):
- the self-training twin: the scratch twin labels the transfer set and a fresh student learns from it by the
  distilled student's own recipe (noisy-student style): the pool without the teacher;
- the labels-only distilled student: the teacher's soft targets on the labelled images alone: the teacher
  without the pool.
Both are trained only when the run uses a transfer set (``distill.unlabeled`` and a pool in the data).
"""

from __future__ import annotations

from pathlib import Path

from kdflow.config import Config
from kdflow.data import prepared as data
from kdflow.errors import ConfigError
from kdflow.infra.io import atomic_write_json
from kdflow.infra.loaders import read_json_state
from kdflow.steps.context import PathArg, RunContext, start_pipeline
from kdflow.steps.distill import distill
from kdflow.steps.results import TrainResult
from kdflow.steps.timing import timed

BASELINES = ("selftrain", "labels_only")
INDEX = "baselines.json"


def uses_transfer_set(cfg: Config, data_dir: PathArg) -> bool:
    return bool(
        cfg.distill.unlabeled and not cfg.distill.data_free and data.load_manifest(data_dir)["counts"].get("unlabeled")
    )


def self_train(
    cfg: Config,
    data_dir: PathArg,
    scratch_path: str | Path,
    out_dir: PathArg,
    ctx: RunContext | None = None,
    fresh: bool = False,
) -> TrainResult | None:
    """The self-training twin: the scratch twin labels the unlabeled transfer set and a fresh student learns
    from it by the distilled student's own recipe (noisy-student style). The third baseline: a gain that the
    twin also gets comes from the pool, not from the teacher."""
    if not uses_transfer_set(cfg, data_dir):
        raise ConfigError(
            "distill.unlabeled",
            "the self-training twin learns from the unlabeled transfer set, and this run has none",
            "keep fewer labels (data.labels_kept) or add data.unlabeled, with distill.unlabeled=true",
        )
    recipe = cfg.model_copy(deep=True)
    recipe.distill.assistant, recipe.distill.extra_teachers, recipe.distill.features = None, [], []
    return distill(recipe, data_dir, scratch_path, out_dir, ctx, fresh, role="selftrain")


@timed("transfer_baselines")
def train_transfer_baselines(
    cfg: Config,
    data_dir: PathArg,
    teacher_path: str | Path,
    scratch_dir: PathArg,
    out_dir: PathArg,
    ctx: RunContext | None = None,
    fresh: bool = False,
) -> dict:
    """The self-training twin (``OUT/selftrain``) and the labels-only distilled student (``OUT/labels_only``) when
    the run uses a transfer set; ``OUT/baselines.json`` says which were trained (none otherwise, and why)."""
    out = Path(out_dir)
    ctx = start_pipeline(cfg, ctx or RunContext())  # its seconds land on the pipeline run, trained or not
    if not uses_transfer_set(cfg, data_dir):
        index = {"trained": [], "reason": "no unlabeled transfer set in this run (data.labels_kept, data.unlabeled)"}
    else:
        self_train(cfg, data_dir, Path(scratch_dir) / "model.pt", out / "selftrain", ctx, fresh)
        labels_only = cfg.model_copy(deep=True)
        labels_only.distill.unlabeled = False
        distill(labels_only, data_dir, teacher_path, out / "labels_only", ctx, fresh, role="labels_only")
        index = {"trained": list(BASELINES)}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / INDEX, index)
    return index


def trained_baselines(baselines_dir: PathArg | None) -> dict[str, Path]:
    """name -> step directory of the baselines a run trained (none for a directory without the index)."""
    if not baselines_dir or not (Path(baselines_dir) / INDEX).is_file():
        return {}
    index = read_json_state(Path(baselines_dir) / INDEX, "--baselines", "run `kdflow train-baselines` again")
    trained = index.get("trained", []) if isinstance(index, dict) else []
    return {name: Path(baselines_dir) / name for name in trained if name in BASELINES}


__all__ = [
    "BASELINES",
    "TrainResult",
    "self_train",
    "train_transfer_baselines",
    "trained_baselines",
    "uses_transfer_set",
]
