"""``kdflow tune``: prep and teacher once, the distillation study, the scratch twin's study, the outputs."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdflow.config import Config
from kdflow.config.distill import ScratchTwinConfig
from kdflow.data import prepared as data
from kdflow.errors import TrainingDiverged
from kdflow.infra.io import atomic_write_json, atomic_write_text, csv_text
from kdflow.steps.context import RunContext, start_pipeline
from kdflow.tune import checks, final, record, report, space, study, verdict
from kdflow.tune.trial import Study, feature_specs, run_trial
from kdflow.tune.verdict import verdict_lines


@dataclass
class TuneResult:
    out: Path
    pick: dict[str, Any]
    twin: dict[str, Any] | None
    kd_gain_val: float | None
    best_yaml: Path
    summary: dict[str, Any]

    @property
    def verdict(self) -> list[str]:
        return verdict_lines(self)

    @property
    def pays(self) -> bool:
        """A positive validation gain beyond chance (McNemar, ``tune.verdict_alpha``): see :mod:`kdflow.tune.verdict`."""
        return verdict.pays(self.kd_gain_val, self.summary)


def _prepared(cfg: Config, out: Path, ctx: RunContext) -> Path:
    from kdflow import steps

    data_dir = out / "data"
    if not (data_dir / "manifest.json").is_file() or not (data_dir / "train.pt").is_file():
        steps.prep(cfg, data_dir, ctx)
    return data_dir


def _teacher(cfg: Config, data_dir: Path, out: Path, ctx: RunContext) -> Path:
    from kdflow import steps

    teacher_dir = out / "teacher"
    if not (teacher_dir / "model.pt").is_file() or not (teacher_dir / "step.json").is_file():
        steps.provide_teacher(cfg, data_dir, teacher_dir, ctx)
    return teacher_dir / "model.pt"


def _recipe(trial) -> dict[str, Any]:
    p = trial.params
    recipe = {k: p[k] for k in ("lr", "weight_decay", "epochs", "method", "temperature", "alpha") if k in p}
    recipe["mix"] = p.get("mix", p.get("mix_dkd", "none"))
    for k in ("teacher_checkpoint", "augment"):
        if k in p:
            recipe[k] = p[k]
    return recipe


def _summary_of(trial, kind: str) -> dict[str, Any]:
    a = trial.user_attrs
    return {
        "study": kind,
        "trial": trial.number,
        "arch": a["arch"],
        "val_accuracy": a["val_accuracy"],
        **{k: report.whole(a[k]) for k in ("params", "macs", "latency_ms") if k in a},
        **({"train_accuracy": a["train_accuracy"]} if "train_accuracy" in a else {}),
        "recipe": _recipe(trial),
    }


def _best_config(cfg: Config, st: Study, chosen, twin, teacher_path: Path) -> Config:
    recipe = _recipe(chosen)
    arch = chosen.user_attrs["arch"]
    model = space.builder_for(cfg, st.prepared)(arch)
    best = space.trial_config(cfg, arch, recipe, feature_specs(st, model, recipe["method"]))
    best.teacher.source = str(teacher_path.resolve())
    best.distill.cache_views = st.cache_views
    best.distill.cache_dir = str((st.out / "teacher_cache").resolve())
    if twin is not None:
        r = _recipe(twin)
        best.scratch_twin = ScratchTwinConfig(
            lr=r["lr"], epochs=r["epochs"], weight_decay=r["weight_decay"], mix=r["mix"], augment=r.get("augment")
        )
    return best


def _print(result: TuneResult, front_rows: list[dict], cost: str) -> None:
    rows = [
        {
            "trial": r["number"],
            "student": r["arch"],
            "val acc": f"{100 * r['val_accuracy']:.2f}%",
            "params": f"{r['params']:,}",
            "MACs": f"{r['macs']:,}",
            **({"latency ms": f"{r['latency_ms']:.3f}"} if r["latency_ms"] != "" else {}),
            "pick": "*" if r["pick"] else "",
        }
        for r in front_rows
    ]
    print(f"Pareto front (validation accuracy against {report.COST_LABELS[cost]}):")
    print(report.markdown_table(rows))
    for line in verdict_lines(result):
        print(line)


def study_key(out: Path, cfg: Config) -> str:
    blob = f"{out.resolve()}|{sorted(study.identity(cfg).items())}".encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def open_context(
    cfg: Config,
    data_dir: Path,
    teacher_path: Path,
    out: Path,
    recorder: record.TrialRecorder,
    cache_dir: Path | None = None,
) -> Study:
    """What every trial shares: prepared data, the frozen teacher(s), the feasible students."""
    prepared = data.load_prepared(data_dir)
    feasible = space.feasible_students(cfg.tune, prepared.input_shape, space.builder_for(cfg, prepared))
    st = Study(cfg, prepared, teacher_path, out, feasible, recorder, cache_dir)
    if cfg.distill.unlabeled and prepared.manifest["counts"].get("unlabeled"):  # distillation trials read the pool
        from kdflow.steps.preflight import check_transfer_set

        check_transfer_set(cfg, "distill")
        checks.check_space_for_pool(cfg)
        st.pool = data.load_split(data_dir, "unlabeled")
    st.ensemble()  # a missing or corrupt teacher (or extra teacher) fails here, before any trial
    return st


def finish(
    cfg: Config,
    st: Study,
    kd,
    scratch,
    teacher_path: Path,
    best_path: Path,
    portable: bool = False,
    started: float | None = None,
    rung: tuple[list, list] | None = None,
) -> TuneResult:
    """trials.csv, pareto.csv/png, best.yaml (``portable``: no local paths, for pipeline pods) and tune.json;
    with a final ``rung`` (its distillation and scratch runs, :mod:`kdflow.tune.final`), the pick and its twin
    are the best at full fidelity (final.csv); the Pareto front stays the search's."""
    out, cost = st.out, cfg.tune.cost
    kd_trials = report.complete(kd)
    searched = report.pick(kd_trials, cost)
    rows = report.trial_rows(kd, "distill") + (report.trial_rows(scratch, "scratch") if scratch is not None else [])
    if searched is None:
        raise none_completed(kd, out)
    twin = report.pick(report.complete(scratch), cost) if scratch is not None else None
    searched_twin_acc = twin.user_attrs["val_accuracy"] if twin else None  # the plot is the search's
    chosen = searched
    if rung is not None:
        chosen, twin = report.pick(rung[0], cost) or searched, report.pick(rung[1], cost)
        final_rows = final.rows(rung[0], "distill", chosen) + final.rows(rung[1], "scratch", twin)
        atomic_write_text(out / "final.csv", csv_text(final_rows))
    front = report.pareto_front(kd_trials, cost)
    # the front and its plot are the search's, but they mark the pick: the final rung's choice where there is
    # one (at its searched score; it may lie off the front), not the search's best
    marked = next((t for t in kd_trials if t.number == chosen.number), searched)
    front_rows = report.pareto_rows(front, marked)
    report.write_tables(out, rows, front_rows)
    costs = ["params", *(["latency_ms"] if "latency_ms" in searched.user_attrs else [])]
    report.plot_pareto(out / "pareto.png", kd_trials, costs, marked, searched_twin_acc)
    best = _best_config(cfg, st, chosen, twin, teacher_path)
    if rung is not None:  # trained as the final rung trained it
        best.data.train_subset = final.final_config(cfg).data.train_subset
        best.distill.cache_views = final.final_epochs(cfg)
    if portable:  # the pipeline passes the teacher as an artifact and builds the cache where it trains
        best.teacher.source = None
        best.distill.cache_dir = None
    atomic_write_text(best_path, best.to_yaml())
    if best_path != out / "best.yaml":
        atomic_write_text(out / "best.yaml", best.to_yaml())
    pick_summary = _summary_of(chosen, "distill")
    twin_summary = _summary_of(twin, "scratch") if twin is not None else None
    gain = pick_summary["val_accuracy"] - twin_summary["val_accuracy"] if twin_summary else None
    summary = {
        "distill_trials": len(kd.trials),
        "distill_finished": study.finished(kd),
        "scratch_trials": study.finished(scratch) if scratch is not None else 0,
        "pick_val_accuracy": pick_summary["val_accuracy"],
        "twin_val_accuracy": twin_summary["val_accuracy"] if twin_summary else None,
        "kd_gain_val": gain,
        "teacher_val_accuracy": st.teacher_val_accuracy(pick_summary["recipe"].get("teacher_checkpoint", "final")),
        "kd_gain_val_mcnemar": verdict.paired(chosen.user_attrs, twin.user_attrs) if twin is not None else None,
        "verdict_alpha": cfg.tune.verdict_alpha,
        "pareto_size": len(front),
        **({"final_top_k": cfg.tune.final.top_k, "final_epochs": final.final_epochs(cfg)} if rung else {}),
        **({"search_pick_trial": searched.number} if rung else {}),
        **({"wall_s": time.perf_counter() - started} if started is not None else {}),
    }
    result = TuneResult(out, pick_summary, twin_summary, gain, best_path, summary)
    atomic_write_json(
        out / "tune.json", {"pick": pick_summary, "twin": twin_summary, **summary, "verdict": verdict_lines(result)}
    )
    _print(result, front_rows, cost)
    return result


def none_completed(kd, out: Path | None) -> TrainingDiverged:
    """Every distillation trial stopped: say why (the budget, or hopeless recipes), tables written first."""
    if out is not None:
        report.write_tables(out, report.trial_rows(kd, "distill"), [])
    reasons = [t.user_attrs.get("stopped", "") for t in kd.trials]
    if reasons and all(r.startswith("over budget") for r in reasons):
        fix = "raise tune.max_latency_ms or add smaller students to tune.space.students"
    else:
        fix = "widen the space (lower tune.space.lr, more epochs) or switch tune.pruner=none"
    where = f" (see {out / 'trials.csv'})" if out is not None else ""
    return TrainingDiverged("tune.space", f"none of the {len(kd.trials)} distillation trials completed{where}", fix)


def pick_arch(kd, cfg: Config, out: Path | None = None) -> str:
    chosen = report.pick(report.complete(kd), cfg.tune.cost)
    if chosen is None:
        raise none_completed(kd, out)
    return str(chosen.user_attrs["arch"])


def _final_study(cfg: Config, out: Path, ctx: RunContext, teacher_path: Path, st: Study) -> Study | None:
    """The final rung's own context (its data: the whole train split; the same teacher), or None without one."""
    if not cfg.tune.final.top_k:
        return None
    fcfg = final.final_config(cfg)
    data_dir = _prepared(fcfg, out / "final", ctx) if fcfg.data.train_subset != cfg.data.train_subset else None
    recorder = record.TrialRecorder(st.recorder.tracker, st.recorder.study_run_id, rung="final")
    return open_context(fcfg, data_dir or out / "data", teacher_path, out, recorder, st.cache_dir)


def plan(cfg: Config, st: Study, top: Study | None, trials: int | None = None) -> str:
    """What the study will train, in sample-passes and full-length trainings, before it starts; ``trials``:
    each study's count where it is fixed otherwise (the cluster form: rounds x parallel, as compiled)."""
    n = st.prepared.manifest["counts"]["train"]
    pool = len(st.pool) if st.pool is not None else 0
    epochs = cfg.tune.space.epochs[1]
    n_kd = trials if trials is not None else cfg.tune.trials
    n_scratch = trials if trials is not None else cfg.tune.scratch_trials
    n_scratch = cfg.tune.trials if n_scratch is None else n_scratch
    search = n_kd * epochs * (n + pool) + n_scratch * epochs * n
    text = (
        f"[tune] plan: {n_kd} distillation + up to {n_scratch} scratch trials of <= {epochs} epochs on {n:,} labelled"
    )
    text += f" (+{pool:,} unlabeled)" if pool else ""
    full_n, full_e = (top.prepared.manifest["counts"]["train"], top.cfg.tune.space.epochs[0]) if top else (n, epochs)
    full_run = full_e * (full_n + pool)
    if top is not None:
        k = cfg.tune.final.top_k
        rung = k * full_e * (full_n + pool) + k * full_e * full_n
        text += f"; final rung: the {k} best of each at {full_e} epochs on {full_n:,}"
        return text + f": ~{(search + rung) / full_run:.1f} full-length trainings ({search + rung:,} sample-passes)"
    return text + f": ~{search / full_run:.1f} trainings of that length ({search:,} sample-passes)"


def tune(cfg: Config, out_dir: str | Path) -> TuneResult:
    """Run (or continue) the study in ``out_dir``; see the package docstring."""
    t0 = time.perf_counter()
    out = Path(out_dir)
    study.check_identity(out, cfg)  # a study of another config is refused before anything is touched
    checks.check_before_work(cfg)
    with study.exclusive(out):
        key = study_key(out, cfg)
        ctx = start_pipeline(cfg, RunContext(pipeline_run_id=f"tune-{key}"))
        data_dir = _prepared(cfg, out, ctx)
        if checks.known_inputs(cfg) is None:  # an image folder: its shape is known now, before any teacher
            checks.check_budget(cfg, data_dir)
        teacher_path = _teacher(cfg, data_dir, out, ctx)
        study.write_identity(out, cfg)
        run_id = record.study_run(ctx.tracker, key, cfg)
        st = open_context(cfg, data_dir, teacher_path, out, record.TrialRecorder(ctx.tracker, run_id))
        study.check_teachers(out, [sha for _, sha in st.ensemble()])
        top = _final_study(cfg, out, ctx, teacher_path, st)
        print(plan(cfg, st, top), flush=True)
        kd = study.open_study(out, "distill", cfg, len(cfg.tune.objectives))
        study.optimize(kd, lambda t: run_trial(t, st, "distill"), cfg.tune.trials, cfg.tune.timeout_s)
        rung: tuple[list, list] | None = None
        arch = pick_arch(kd, cfg, out)
        if top is not None:  # the pick's student is the best at full fidelity: its twin is tuned for that one
            rung = (final.train_best(report.complete(kd), top, "distill"), [])
            best = report.pick(rung[0], cfg.tune.cost)  # none completed at full length: the search's pick stands
            arch = str(best.user_attrs["arch"]) if best is not None else arch
        scratch = study.open_study(out, f"scratch-{arch}", cfg, 1)
        n_scratch = cfg.tune.scratch_trials if cfg.tune.scratch_trials is not None else study.finished(kd)
        study.optimize(scratch, lambda t: run_trial(t, st, "scratch", arch), n_scratch, None)
        if top is not None and rung is not None:
            rung = (rung[0], final.train_best(report.complete(scratch), top, "scratch", arch))
        result = finish(cfg, st, kd, scratch, teacher_path, out / "best.yaml", started=t0, rung=rung)
        record.study_outputs(ctx.tracker, run_id, out, result.summary)
        return result
