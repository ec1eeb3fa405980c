"""The cluster form of a tune: Optuna's ask/tell in rounds, each round's trials in parallel pods.

The pipeline (pipelines/autodistill.py) calls :func:`check_cluster_form` after prep, then per round
:func:`ask` (sample ``count`` trials into a new copy of the study), one :func:`run_spec` per trial in a
``dsl.ParallelFor``, then :func:`tell`. Trials
in one round do not see each other, so the pruner does not act here (a local ``kdflow tune`` prunes).
The study travels between pods as a small artifact (study.db + study.json); the teacher cache as another.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from kdflow.config import Config
from kdflow.steps.context import RunContext, start_pipeline
from kdflow.tune import record, space, study
from kdflow.tune.checks import check_budget
from kdflow.tune.run import TuneResult, finish, open_context, pick_arch
from kdflow.tune.trial import run_trial

INT_PARAMS = {"epochs", "cnn_depth", *(f"cnn_width_d{d}" for d in range(2, 64))}


def _copy(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in (study.DB, study.IDENTITY):
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)


def _study(cfg: Config, where: Path, kind: str) -> optuna.Study:
    if kind == "distill":
        return study.open_study(where, "distill", cfg, len(cfg.tune.objectives), reap_running=False)
    arch = pick_arch(_study(cfg, where, "distill"), cfg)
    return study.open_study(where, f"scratch-{arch}", cfg, 1, reap_running=False)


def check_cluster_form(cfg: Config, data_dir: Path | None = None) -> None:
    """What the rounds cannot do, and a budget no student meets, are refused, not ignored: the local runner
    calls this before the DAG starts (the budget when the inputs are known before prep), the check step
    after prep and before the teacher (an image folder's budget), with ``data_dir``."""
    if cfg.tune.final.top_k:
        from kdflow.errors import ConfigError

        raise ConfigError(
            "tune.final.top_k",
            "the autodistill DAG has no final rung yet (its trials run in rounds of pods)",
            "run the final rung with kdflow tune, or set tune.final.top_k=0",
        )
    check_budget(cfg, data_dir)


def setup(cfg: Config, data_dir: Path, teacher_path: Path, study_out: Path, cache_out: Path) -> None:
    """Create the empty studies and build the teacher caches every trial reads (one per mixing choice, teacher
    checkpoint and train view)."""
    check_cluster_form(cfg, data_dir)
    study_out.mkdir(parents=True, exist_ok=True)
    study.write_identity(study_out, cfg)
    study.open_study(study_out, "distill", cfg, len(cfg.tune.objectives), reap_running=False)
    st = open_context(cfg, data_dir, teacher_path, study_out, record.TrialRecorder(None, None), cache_out)
    for mix in cfg.tune.space.mix:
        for which in cfg.tune.space.teacher_checkpoints:
            views: list[bool | None] = [None]  # one per train view searched; None: the prepared one
            for augment in cfg.tune.space.augment or views:
                st.teacher_cache(mix, which, augment)


def ask(cfg: Config, study_in: Path, study_out: Path, data_dir: Path, kind: str, count: int) -> list[dict[str, Any]]:
    """Sample ``count`` trials of ``kind`` (distill, or scratch for the distillation pick's student)."""
    from kdflow.data import prepared as data

    _copy(study_in, study_out)
    s = _study(cfg, study_out, kind)
    prepared = data.load_prepared(data_dir)
    feasible = space.feasible_students(cfg.tune, prepared.input_shape, space.builder_for(cfg, prepared))
    arch = None if kind == "distill" else s.study_name.removeprefix("scratch-")
    specs = []
    for _ in range(count):
        trial = s.ask()
        student = arch or space.sample_student(trial, cfg.tune, feasible)
        space.sample_recipe(trial, cfg.tune, distill=kind == "distill")
        specs.append({"kind": kind, "number": trial.number, "arch": student, "params": trial.params})
    return specs


def run_spec(
    cfg: Config, data_dir: Path, teacher_path: Path, cache_dir: Path, spec: dict[str, Any], pipeline_run_id: str
) -> dict[str, Any]:
    """Train one asked trial (in its own pod); returns what :func:`tell` records."""
    ctx = start_pipeline(cfg, RunContext(pipeline_run_id=pipeline_run_id))
    with tempfile.TemporaryDirectory(prefix="kdflow-trial-") as tmp:
        recorder = record.TrialRecorder(ctx.tracker, ctx.parent_run_id)
        st = open_context(cfg, data_dir, teacher_path, Path(tmp), recorder, cache_dir)
        # KFP passes a dict parameter through JSON: whole numbers come back as floats
        params = {
            k: int(v) if isinstance(v, float) and v.is_integer() and k in INT_PARAMS else v
            for k, v in spec["params"].items()
        }
        trial = optuna.trial.FixedTrial(params, number=int(spec["number"]))
        arch = spec["arch"] if spec["kind"] == "scratch" else None
        try:
            values = run_trial(trial, st, spec["kind"], arch)
            state = "complete"
        except optuna.TrialPruned:
            values, state = None, "pruned"
    values = list(values) if isinstance(values, tuple) else ([values] if values is not None else None)
    return {
        "kind": spec["kind"],
        "number": spec["number"],
        "state": state,
        "values": values,
        "user_attrs": trial.user_attrs,
    }


def tell(cfg: Config, study_in: Path, study_out: Path, results: list[dict[str, Any]]) -> None:
    _copy(study_in, study_out)
    if not results:
        return
    s = _study(cfg, study_out, results[0]["kind"])
    storage = optuna.storages.RDBStorage(study.storage_url(study_out))  # user attributes are set through it
    study_id = storage.get_study_id_from_name(s.study_name)
    for r in results:
        number = int(r["number"])
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
        for k, v in r["user_attrs"].items():
            storage.set_trial_user_attr(trial_id, k, v)
        if r["state"] == "complete":
            s.tell(number, r["values"])
        else:
            s.tell(number, state=TrialState.PRUNED)


def conclude(
    cfg: Config, study_in: Path, data_dir: Path, teacher_path: Path, out: Path, best_config: Path
) -> TuneResult:
    """The pick, its twin, the Pareto front and the portable best config the pipeline trains next."""
    _copy(study_in, out)
    st = open_context(cfg, data_dir, teacher_path, out, record.TrialRecorder(None, None))
    kd = _study(cfg, out, "distill")
    scratch = _study(cfg, out, "scratch")
    return finish(cfg, st, kd, scratch, teacher_path, best_config, portable=True)
