"""One trial: sample a student and recipe, train it on the shared teacher cache, report val accuracy per epoch."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
import torch.nn as nn

from kdflow.config import Config
from kdflow.data import cache
from kdflow.data.ensemble_cache import EnsembleCache, get_or_build_all
from kdflow.data.prepared import PreparedData, Split
from kdflow.errors import KdflowError
from kdflow.evaluation.metrics import accuracy, predict_logits
from kdflow.evaluation.significance import pack_correct
from kdflow.infra import checkpoints
from kdflow.infra.io import sha256_file
from kdflow.models.compiled import frozen_forward
from kdflow.training.objective import DistillObjective, SupervisedObjective
from kdflow.training.trainer import fit
from kdflow.tune import space
from kdflow.tune.cost import model_cost
from kdflow.tune.record import TrialRecorder


@dataclass
class Study:
    """What every trial of one tune shares: config, data, teacher, its caches, budget, where to write."""

    cfg: Config
    prepared: PreparedData
    teacher_path: Path  # the final teacher; best_val and epoch snapshots sit next to it
    out: Path
    feasible: space.Feasible
    recorder: TrialRecorder
    cache_dir: Path | None = None  # default: out/teacher_cache
    caches: dict[tuple[str, str, bool | None], cache.TeacherCache | EnsembleCache] = field(default_factory=dict)
    teachers: dict[str, tuple[nn.Module, str]] = field(default_factory=dict)
    pool: Split | None = None  # the unlabeled transfer set, which distillation trials learn from too (not scratch)

    @property
    def distill_data(self) -> PreparedData:
        """What a distillation trial trains on: the labels, and the transfer set when the run uses one."""
        if self.pool is None:
            return self.prepared
        from dataclasses import replace

        from kdflow.data.transfer_set import with_pool

        return replace(self.prepared, train=with_pool(self.prepared.train, self.pool))

    def teacher(self, which: str = "final") -> tuple[nn.Module, str]:
        """The frozen teacher ``distill.teacher_checkpoint`` names, and its sha256 (loaded once)."""
        if which not in self.teachers:
            from kdflow.steps.teacher_checkpoints import chosen_teacher
            from kdflow.steps.train import load_teacher

            path = chosen_teacher(str(self.teacher_path), which)
            model, _ = load_teacher(path, self.prepared.num_classes, input_shape=self.input_shape)
            self.teachers[which] = (model, sha256_file(path))
        return self.teachers[which]

    def ensemble(self, which: str = "final") -> list[tuple[nn.Module, str]]:
        """Every teacher a distillation trial learns from: ``which`` checkpoint of the study's teacher, then the
        ``distill.extra_teachers`` (their final weights), each with its sha256 (loaded once)."""
        from kdflow.steps.train import load_teacher

        members = [self.teacher(which)]
        for i, extra in enumerate(self.cfg.distill.extra_teachers):
            name = f"extra:{i}"
            if name not in self.teachers:
                where = f"distill.extra_teachers[{i}].source"
                model, _ = load_teacher(extra.source, self.prepared.num_classes, where, self.input_shape)
                self.teachers[name] = (model, sha256_file(checkpoints.resolve_source(extra.source, "teacher")))
            members.append(self.teachers[name])
        return members

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.prepared.input_shape

    @property
    def cache_views(self) -> int:
        return self.cfg.tune.cache_views or self.cfg.tune.space.epochs[1]

    def teacher_val_accuracy(self, which: str = "final") -> float:
        """The teacher's accuracy on the validation images (of the ensemble, combined by ``distill.ensemble``, when
        there are extra teachers): how far above the twin it stands is how much it has to teach (the verdict's
        "why" reads the lead)."""
        from kdflow.training.losses import ensemble_soft_targets

        val, norm = self.prepared.val, self.prepared.normalizer()
        logits = [
            predict_logits(frozen_forward(t, bool(self.cfg.teacher.channels_last), compiled=False), val, norm)
            for t, _ in self.ensemble(which)
        ]
        combined = logits[0] if len(logits) == 1 else ensemble_soft_targets(logits, 1.0, self.cfg.distill.ensemble)
        return accuracy(combined, val.y)

    def data_for(self, kind: str, augment: bool | None) -> PreparedData:
        """What a trial of ``kind`` trains on, under the train view it sampled (None: the prepared one)."""
        base = self.distill_data if kind == "distill" else self.prepared
        if augment is None:
            return base
        from kdflow.steps.train_view import with_train_view

        return with_train_view(base, self.cfg.data.model_copy(update={"augment": augment}))

    def teacher_cache(
        self, mix: str, which: str = "final", augment: bool | None = None
    ) -> cache.TeacherCache | EnsembleCache:
        """One cache per mixing choice, teacher checkpoint and train view (a file per teacher of an ensemble),
        built once and shared by every trial (memory and disk); one view where every view is the same image, as in
        the distill step."""
        if (mix, which, augment) not in self.caches:
            spec = {"kind": mix, "alpha": self.cfg.train.mix_alpha} if mix != "none" else None
            from kdflow.steps.teacher_cache import exact_views

            members, data = self.ensemble(which), self.data_for("distill", augment)
            self.caches[(mix, which, augment)], _, _ = get_or_build_all(
                [frozen_forward(t, bool(self.cfg.teacher.channels_last), compiled=False) for t, _ in members],
                [sha for _, sha in members],
                data,
                exact_views(data, self.cache_views, mix),
                self.cfg.distill.cache_seed,
                self.cache_dir or self.out / "teacher_cache",
                spec,
                self.cfg.distill.cache_topk,
            )
        return self.caches[(mix, which, augment)]


# Per-image records travel with each trial (Optuna's store; on a cluster, a KFP output parameter collected
# over every trial of a round): at most 8 KB of bits each. Above it the verdict reads the gain alone, and says so.
MAX_PAIRED_VAL = 65_536


def _val_correct(model: nn.Module, cfg: Config, prepared: PreparedData) -> str:
    """Which validation images the trained student gets right (packed): the pick and its twin are judged on
    the same images, so the verdict can test its gain against chance (McNemar), not read a few images as one."""
    val = prepared.val
    logits = predict_logits(model, val, prepared.normalizer(), channels_last=cfg.train_for("student").channels_last)
    return pack_correct(logits.argmax(1) == val.y)


def feature_specs(study: Study, student: nn.Module, method: str) -> list[dict] | None:
    """``kd+<loss>``: the loss between the last spatial maps of student and teacher; None if one has none."""
    _, _, kind = method.partition("+")
    if not kind:
        return []
    s_mod = space.last_feature_map(student, study.input_shape)
    t_mod = space.last_feature_map(study.teacher()[0], study.input_shape)
    if s_mod is None or t_mod is None:
        return None
    return [{"kind": kind, "student_module": s_mod, "teacher_module": t_mod}]


def _stop(trial: optuna.Trial | optuna.trial.FixedTrial, reason: str) -> optuna.TrialPruned:
    trial.set_user_attr("stopped", reason)
    return optuna.TrialPruned(reason)


def run_trial(
    trial: optuna.Trial | optuna.trial.FixedTrial,
    study: Study,
    kind: str,
    student_arch: str | None = None,
    resume_in: tuple[Path, dict[str, Any]] | None = None,
) -> Any:
    """``kind`` 'distill' samples student and KD recipe; 'scratch' trains ``student_arch`` on labels only.

    ``resume_in`` (a folder and what the run depends on; the final rung's long runs) keeps a checkpoint every
    epoch there, so a run killed or interrupted continues from its last epoch when the tune runs again; the
    folder goes once the run ends. The search's short trials start over."""
    t0 = time.perf_counter()
    tune = study.cfg.tune
    student_name = student_arch or space.sample_student(trial, tune, study.feasible)
    recipe = space.sample_recipe(trial, tune, distill=kind == "distill")
    torch.manual_seed(study.cfg.train.seed)
    model = space.builder_for(study.cfg, study.prepared)(student_name)
    need_latency = "latency_ms" in tune.objectives or tune.max_latency_ms is not None
    cost = model_cost(model, study.input_shape, latency=need_latency)
    trial.set_user_attr("arch", student_name)
    for k, v in cost.items():
        trial.set_user_attr(k, v)
    if tune.max_latency_ms is not None and cost["latency_ms"] > tune.max_latency_ms:
        raise _stop(trial, f"over budget: latency {cost['latency_ms']:.3f} ms > {tune.max_latency_ms} ms")
    features = feature_specs(study, model, recipe["method"]) if kind == "distill" else []
    if features is None:
        raise _stop(trial, f"{recipe['method']}: {student_name} or the teacher has no spatial feature map")
    cfg = space.trial_config(study.cfg, student_name, recipe, features)
    if kind == "distill":
        which = cfg.distill.teacher_checkpoint
        objective: nn.Module = DistillObjective(
            [t for t, _ in study.ensemble(which)],
            model,
            cfg.distill,
            study.input_shape,
            study.prepared.num_classes,
            teacher_channels_last=bool(cfg.teacher.channels_last),
        )
        teacher_cache = study.teacher_cache(recipe["mix"], which, recipe.get("augment")) if cfg.distill.cache else None
    else:
        objective, teacher_cache = SupervisedObjective(), None
    single = kind == "scratch" or len(tune.objectives) == 1  # the twin's study maximises accuracy alone
    with study.recorder.trial_run(trial, kind, cfg, recipe) as log_epoch:

        def on_epoch(row: dict) -> None:
            log_epoch(row)
            if single:  # Optuna prunes single-objective studies only; a cheap Pareto point is no failure
                trial.report(row["val_acc"], row["epoch"])
                if trial.should_prune():
                    raise _stop(trial, f"pruned at epoch {row['epoch']} (val accuracy {row['val_acc']:.4f})")

        run_dir = resume_in[0] if resume_in else study.out / "trials" / f"{kind}-{trial.number:04d}"
        ended = False  # trained to the end or stopped for good; an interrupted resumable run keeps its folder
        try:
            fitted = fit(
                model,
                objective,
                study.data_for(kind, recipe.get("augment")),
                cfg.train_for("student"),
                epochs=cfg.epochs_for("student"),
                lr=cfg.lr_for("student"),
                out_dir=run_dir,
                desc=f"{kind} trial {trial.number}",
                resume=resume_in is not None,
                on_epoch=on_epoch,
                teacher_cache=teacher_cache,
                fingerprint=resume_in[1] if resume_in else None,
            )
            ended = True
        except KdflowError as e:  # diverged or collapsed: this recipe is hopeless, the study goes on
            ended = True
            raise _stop(trial, f"stopped: {e.problem}") from None
        finally:
            objective.close()  # type: ignore[operator]
            trial.set_user_attr("wall_s", time.perf_counter() - t0)
            if ended or resume_in is None:
                shutil.rmtree(run_dir, ignore_errors=True)
        if fitted.resumed_from is not None:
            trial.set_user_attr("resumed_from_epoch", fitted.resumed_from + 1)
        history = fitted.history
        val = fitted.best_val_acc if cfg.train.select == "best_val" else (history[-1]["val_acc"] if history else 0.0)
        trial.set_user_attr("val_accuracy", val)
        if history:  # the last epoch's, on augmented batches: beside val, whether the student underfits
            trial.set_user_attr("train_accuracy", history[-1]["train_acc"])
        if len(study.prepared.val) <= MAX_PAIRED_VAL:  # the verdict's paired test
            trial.set_user_attr("val_correct", _val_correct(model, cfg, study.prepared))
        study.recorder.finish(trial, val, cost)
    return (val, cost[tune.objectives[1]]) if not single else val
