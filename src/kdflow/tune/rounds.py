"""The cluster form of a tune: Optuna's ask/tell in rounds, each round's trials in parallel pods.

The pipeline (pipelines/autodistill.py) calls :func:`check_cluster_form` after prep, then per round
:func:`ask` (sample ``count`` trials into a new copy of the study), one :func:`run_spec` per trial in a
``dsl.ParallelFor``, then :func:`tell`. Trials in one round do not see each other, so the pruner does not
act here (a local ``kdflow tune`` prunes).
The study travels between pods as a small artifact (study.db + study.json, the final rung's records); the
teacher cache as another. A final rung (``tune.final.top_k``, fixed when the pipeline is compiled) is one more
round per study: the ``k`` best trials asked again at full fidelity (:func:`ask` with ``rung="final"``), trained
in parallel pods on the whole train split, their records told into the study; the twin's study is then the
final pick's student, and :func:`conclude` picks among the final runs, as ``kdflow tune`` does.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from kdflow.config import Config
from kdflow.data.prepared import load_manifest
from kdflow.infra.io import atomic_write_text
from kdflow.steps.context import RunContext, start_pipeline
from kdflow.tune import final, record, report, space, study
from kdflow.tune.checks import check_budget
from kdflow.tune.run import TuneResult, finish, none_completed, open_context, pick_arch, plan
from kdflow.tune.trial import run_trial

PLAN = "plan.txt"  # the study's cost, stated by setup before any trial; it travels with the study to conclude
INT_PARAMS = {"epochs", "cnn_depth", *(f"cnn_width_d{d}" for d in range(2, 64))}


def _copy(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in (study.DB, study.IDENTITY, PLAN):
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
    for kept in sorted((src / "final").glob("*.json")):  # the final rung's records
        (dst / "final").mkdir(exist_ok=True)
        shutil.copy2(kept, dst / "final" / kept.name)


def _final_runs(cfg: Config, where: Path, s: optuna.Study, kind: str, arch: str | None = None) -> list:
    """The final rung's runs of ``s``, from records made in this pipeline run (conclude checks their data)."""
    k, epochs = cfg.tune.final.top_k, final.final_epochs(cfg)
    return final.recorded(report.complete(s), where, kind, k, epochs, None, arch)


def _check_final_data(where: Path, digest: str) -> None:
    """Refuse final records trained on other data than the final rung's: the pick must not rest on them."""
    for path in sorted((where / "final").glob("*.json")):
        kept = final.read_record(path)
        if kept is not None and kept.get("data_digest") != digest:
            raise ValueError(
                f"final rung record {path.name} was trained on data {kept.get('data_digest')}, not the final "
                f"rung's {digest}: run the pipeline again so that its final pods read tune setup's final_dataset"
            )


def _pick_arch(cfg: Config, where: Path) -> str:
    """The student of the twin's study: the final rung's pick where there is one, else the search's."""
    kd = study.open_study(where, "distill", cfg, len(cfg.tune.objectives), reap_running=False)
    best = report.pick(_final_runs(cfg, where, kd, "distill"), cfg.tune.cost) if cfg.tune.final.top_k else None
    return str(best.user_attrs["arch"]) if best is not None else pick_arch(kd, cfg)


def _study(cfg: Config, where: Path, kind: str) -> optuna.Study:
    if kind == "distill":
        return study.open_study(where, "distill", cfg, len(cfg.tune.objectives), reap_running=False)
    return study.open_study(where, f"scratch-{_pick_arch(cfg, where)}", cfg, 1, reap_running=False)


def check_cluster_form(cfg: Config, data_dir: Path | None = None, final_top_k: int | None = None) -> None:
    """What the compiled DAG cannot do, and a budget no student meets, are refused, not ignored: the local
    runner calls this before the DAG starts (the budget when the inputs are known before prep), the check step
    after prep and before the teacher (an image folder's budget), with ``data_dir`` and the final rung the
    pipeline was compiled with."""
    if final_top_k is not None and cfg.tune.final.top_k != final_top_k:
        from kdflow.errors import ConfigError

        raise ConfigError(
            "tune.final.top_k",
            f"is {cfg.tune.final.top_k} but the autodistill pipeline was compiled with a final rung of {final_top_k}",
            f"compile it with --final-top-k {cfg.tune.final.top_k}, or set tune.final.top_k={final_top_k}",
        )
    check_budget(cfg, data_dir)


def setup(
    cfg: Config,
    data_dir: Path,
    teacher_path: Path,
    study_out: Path,
    cache_out: Path,
    final_data: Path | None = None,
    pipeline_run_id: str = "local",
    trials: int | None = None,
) -> None:
    """Create the empty studies and build the teacher caches every trial reads (one per mixing choice, teacher
    checkpoint and train view); with a final rung, its data in ``final_data`` (the whole train split, prepared
    when the search runs on a subset) and its caches (one view per epoch of the final length) too. ``trials``
    (each study's count, rounds x parallel as compiled) states the study's cost in :data:`PLAN` and the log."""
    check_cluster_form(cfg, data_dir)
    study_out.mkdir(parents=True, exist_ok=True)
    study.write_identity(study_out, cfg)
    study.open_study(study_out, "distill", cfg, len(cfg.tune.objectives), reap_running=False)
    contexts = [(cfg, data_dir)]
    if cfg.tune.final.top_k:
        if final_data is None:
            raise ValueError("a final rung needs final_data, the folder of its data")
        fcfg = final.final_config(cfg)
        if fcfg.data.train_subset != cfg.data.train_subset:
            from kdflow import steps

            steps.prep(fcfg, final_data, RunContext(pipeline_run_id=pipeline_run_id))
        else:  # the same data: a copy, so the final rung and the students it picks read one artifact either way
            shutil.copytree(data_dir, final_data, dirs_exist_ok=True)
        contexts.append((fcfg, final_data))
    opened = []
    for c, d in contexts:
        st = open_context(c, d, teacher_path, study_out, record.TrialRecorder(None, None), cache_out)
        opened.append(st)
        for mix in c.tune.space.mix:
            for which in c.tune.space.teacher_checkpoints:
                views: list[bool | None] = [None]  # one per train view searched; None: the prepared one
                for augment in c.tune.space.augment or views:
                    st.teacher_cache(mix, which, augment)
    if trials is not None:
        stated = plan(cfg, opened[0], opened[1] if len(opened) > 1 else None, trials)
        print(stated, flush=True)
        atomic_write_text(study_out / PLAN, stated + "\n")


def read_plan(study_dir: Path) -> str | None:
    """The cost setup stated (None for a study set up without one)."""
    path = study_dir / PLAN
    return path.read_text().strip() if path.is_file() else None


def ask(
    cfg: Config, study_in: Path, study_out: Path, data_dir: Path, kind: str, count: int, rung: str = "search"
) -> list[dict[str, Any]]:
    """Sample ``count`` trials of ``kind`` (distill, or scratch for the distillation pick's student); with
    ``rung="final"``, the ``tune.final.top_k`` best completed trials again, at the final length."""
    from kdflow.data import prepared as data

    _copy(study_in, study_out)
    s = _study(cfg, study_out, kind)
    if rung == "final":
        return _ask_final(cfg, s, kind)
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


def _ask_final(cfg: Config, s: optuna.Study, kind: str) -> list[dict[str, Any]]:
    complete = report.complete(s)
    if not complete:
        raise none_completed(s, None)
    arch = None if kind == "distill" else s.study_name.removeprefix("scratch-")
    epochs = final.final_epochs(cfg)
    return [
        {
            "kind": kind,
            "rung": "final",
            "number": t.number,
            "arch": arch or t.user_attrs["arch"],
            "params": {**t.params, "epochs": epochs},
            "searched_val_accuracy": t.user_attrs["val_accuracy"],
        }
        for t in final.top_trials(complete, cfg.tune.final.top_k)
    ]


def run_spec(
    cfg: Config, data_dir: Path, teacher_path: Path, cache_dir: Path, spec: dict[str, Any], pipeline_run_id: str
) -> dict[str, Any]:
    """Train one asked trial (in its own pod); returns what :func:`tell` records. A final-rung spec trains at
    the final length; ``data_dir`` is then the final rung's data (setup's ``final_data``)."""
    ctx = start_pipeline(cfg, RunContext(pipeline_run_id=pipeline_run_id))
    is_final = spec.get("rung") == "final"
    if is_final:
        cfg = final.final_config(cfg)
    with tempfile.TemporaryDirectory(prefix="kdflow-trial-") as tmp:
        recorder = record.TrialRecorder(ctx.tracker, ctx.parent_run_id, rung="final" if is_final else "")
        st = open_context(cfg, data_dir, teacher_path, Path(tmp), recorder, cache_dir)
        # KFP passes a dict parameter through JSON: whole numbers come back as floats
        params = {
            k: int(v) if isinstance(v, float) and v.is_integer() and k in INT_PARAMS else v
            for k, v in spec["params"].items()
        }
        trial = optuna.trial.FixedTrial(params, number=int(spec["number"]))
        arch = spec["arch"] if spec["kind"] == "scratch" else None
        # a final run (full length) keeps its checkpoint where the pod retried after a lost node finds it
        resume = (
            final.pod_resume(cfg, spec, params, st.prepared.digest, teacher_path, pipeline_run_id) if is_final else None
        )
        try:
            values = run_trial(trial, st, spec["kind"], arch, resume_in=resume)
            state = "complete"
        except optuna.TrialPruned:
            values, state = None, "pruned"
    values = list(values) if isinstance(values, tuple) else ([values] if values is not None else None)
    result = {"kind": spec["kind"], "number": spec["number"], "state": state, "values": values}
    result["user_attrs"] = trial.user_attrs
    if is_final:
        result.update(rung="final", params=params, data_digest=st.prepared.digest, arch=spec["arch"])
        result["searched_val_accuracy"] = spec["searched_val_accuracy"]
    return result


def _tell_final(study_out: Path, results: list[dict[str, Any]]) -> None:
    """Each final run's record, as ``kdflow tune`` keeps it (:mod:`kdflow.tune.final`)."""
    for r in results:
        arch = r["arch"] if r["kind"] == "scratch" else None
        path = final.record_path(study_out, r["kind"], int(r["number"]), arch)
        path.parent.mkdir(parents=True, exist_ok=True)
        final.write_record(
            path, int(r["params"]["epochs"]), r["data_digest"], r["params"], r["user_attrs"], r["searched_val_accuracy"]
        )


def tell(cfg: Config, study_in: Path, study_out: Path, results: list[dict[str, Any]]) -> None:
    _copy(study_in, study_out)
    if not results:
        return
    if results[0].get("rung") == "final":
        _tell_final(study_out, results)
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
    cfg: Config,
    study_in: Path,
    data_dir: Path,
    teacher_path: Path,
    out: Path,
    best_config: Path,
    final_data: Path | None = None,
) -> TuneResult:
    """The pick, its twin, the Pareto front and the portable best config the pipeline trains next. With a final
    rung, its records count only where trained on ``final_data`` (setup's data, by its manifest's digest)."""
    if cfg.tune.final.top_k:  # before anything is written: the pick must not rest on runs of other data
        if final_data is None:
            raise ValueError("a final rung needs final_data, the folder of its data")
        _check_final_data(study_in, load_manifest(final_data)["digest"])
    _copy(study_in, out)
    st = open_context(cfg, data_dir, teacher_path, out, record.TrialRecorder(None, None))
    kd = _study(cfg, out, "distill")
    scratch = _study(cfg, out, "scratch")
    rung = None
    if cfg.tune.final.top_k:
        arch = scratch.study_name.removeprefix("scratch-")
        rung = (_final_runs(cfg, out, kd, "distill"), _final_runs(cfg, out, scratch, "scratch", arch))
    return finish(cfg, st, kd, scratch, teacher_path, best_config, portable=True, rung=rung)
