"""The data and training steps: prep, teacher (trained or provided), scratch student, distilled student."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from kdflow import checkpoints, data, evaluate, models, reuse
from kdflow.adversarial_training import TrainingAttack
from kdflow.config import Config, write_resolved
from kdflow.distributed import LR_SCALING_RULE, DistInfo, info_from_env
from kdflow.fingerprint import fingerprint, trains_adversarially
from kdflow.io import atomic_write_json, atomic_write_text, csv_text, sha256_file
from kdflow.steps import record, results
from kdflow.steps.context import PathArg, RunContext, start_pipeline, upload
from kdflow.steps.results import PrepResult, TrainResult
from kdflow.steps.teacher_checkpoints import TEACHER_CHECKPOINTS, chosen_teacher, save_variant, with_snapshots
from kdflow.steps.timing import timed
from kdflow.trainer import FitResult, check_resumable, fit

STEP_NAMES = {
    "teacher": "train_teacher",
    "scratch": "train_student_scratch",
    "distill": "distill_student",
    "assistant": "distill_assistant",
}
UPLOADED = ["model.pt", "history.csv", "metrics.json", "config.resolved.yaml"]
ObjectiveFactory = Callable[[nn.Module, data.PreparedData], nn.Module]
CacheFactory = Callable[[data.PreparedData], tuple[Any, dict]]


@timed("prep_data")
def prep(cfg: Config, out_dir: PathArg, ctx: RunContext | None = None) -> PrepResult:
    from kdflow.steps.preflight import check_models

    out = Path(out_dir)
    check_models(cfg)  # an unknown architecture or feature module fails here, not steps later
    ctx = start_pipeline(cfg, ctx or RunContext())
    manifest = data.prepare(cfg.data, out, cache_dir=Path(cfg.storage.state_dir) / "sources")
    write_resolved(cfg, out)
    result: PrepResult = {
        "digest": manifest["digest"],
        "test_digest": manifest["test_digest"],
        "counts": manifest["counts"],
        "dataset": manifest["dataset"],
        "window": manifest["window"],
        "parent_run_id": ctx.parent_run_id,
        "pipeline_run_id": ctx.pipeline_run_id,
        "config_hash": cfg.digest(),
    }
    result = results.merged(result, record.prep(ctx.tracker, ctx, cfg, manifest, out))
    results.write(out, result)
    return result


def _metrics(
    model: nn.Module, fitted: FitResult, prepared: data.PreparedData, dist_info: DistInfo, cfg: Config, extra: dict
) -> dict[str, Any]:
    test_acc, val_selected = evaluate.final_and_val_selected_accuracy(model, fitted.best_state, prepared)
    history = fitted.history
    return {
        "test_accuracy": test_acc,
        "val_selected_test_accuracy": val_selected,
        "best_val_accuracy": fitted.best_val_acc,
        "best_epoch": fitted.best_epoch,
        "final_val_accuracy": history[-1]["val_acc"] if history else None,
        **models.model_report(model, tuple(prepared.train.x.shape[1:])),
        "epochs": len(history),
        "world_size": dist_info.world,
        "global_batch": cfg.train.batch_size,
        "lr_scaling_rule": LR_SCALING_RULE,
        **extra,
        "seconds_per_epoch": (sum(h["seconds"] for h in history) / len(history)) if history else 0.0,
    }


def _write_outputs(
    model: nn.Module,
    arch: str,
    prepared: data.PreparedData,
    out: Path,
    fitted: FitResult,
    metrics: dict,
    cfg: Config,
    extra: dict,
) -> None:
    checkpoints.save_model(
        model, arch, prepared.num_classes, prepared.in_channels, prepared.image_size[0], out / "model.pt", extra=extra
    )
    if fitted.history:
        atomic_write_text(out / "history.csv", csv_text(fitted.history))
    atomic_write_json(out / "history.json", fitted.history)
    atomic_write_json(out / "metrics.json", metrics)
    write_resolved(cfg, out)


@dataclass
class TrainingJob:
    """One training step: what to train, on what, where, and what its result depends on."""

    cfg: Config
    role: str  # teacher, scratch or distill
    arch: str
    data_dir: Path
    out: Path
    ctx: RunContext
    objective_factory: ObjectiveFactory
    lineage: dict[str, str] = field(default_factory=dict)
    cache_factory: CacheFactory | None = None
    teacher_digest: str = ""
    fresh: bool = False  # discard a checkpoint left in out/train_state instead of resuming it

    @property
    def step(self) -> str:
        return STEP_NAMES[self.role]

    @property
    def checkpoint(self) -> Path:
        return self.out / "train_state" / "checkpoint.pt"


def _fit(
    job: TrainingJob,
    fp: dict,
    model: nn.Module,
    objective: nn.Module,
    prepared: data.PreparedData,
    on_epoch: Callable[[dict], None] | None,
) -> tuple[FitResult, dict]:
    """The training loop of one step, with the teacher cache when distilling offline."""
    cfg, model_role = job.cfg, "teacher" if job.role == "teacher" else "student"
    teacher_cache, cache_info = job.cache_factory(prepared) if job.cache_factory is not None else (None, {})
    fitted = fit(
        model,
        objective,
        prepared,
        cfg.train_for(model_role),
        epochs=cfg.epochs_for(model_role),
        lr=cfg.lr_for(model_role),
        out_dir=job.checkpoint.parent,
        desc=job.step,
        teacher_cache=teacher_cache,
        on_epoch=on_epoch,
        fingerprint=fp,
    )
    objective.close()  # type: ignore[operator]  # every objective module has close()
    return fitted, cache_info


def _reusable(job: TrainingJob, fp: dict, dist_info: DistInfo) -> Path | None:
    """An earlier run's model with this exact fingerprint, unless told to train afresh (or under DDP)."""
    if job.fresh or not job.cfg.storage.reuse or dist_info.world > 1:
        return None
    return reuse.lookup(reuse_store(job.cfg), job.role, fp)


def reuse_store(cfg: Config) -> Path:
    return Path(cfg.storage.state_dir) / "trained"


def _restore(job: TrainingJob, entry: Path, tracker, run_id: str | None) -> tuple[nn.Module, dict]:
    """The reused model into the step's output, its metrics, and its epoch history into this step's run."""
    reuse.restore(entry, job.out)
    model, _ = checkpoints.load_model(str(job.out / "model.pt"), field="storage.reuse")
    history = json.loads((job.out / "history.json").read_text()) if (job.out / "history.json").is_file() else []
    log_epoch = record.epoch_logger(tracker, run_id)
    if log_epoch is not None:
        for row in history:
            log_epoch(row)
    write_resolved(job.cfg, job.out)
    return model, json.loads((job.out / "metrics.json").read_text())


def train_model(job: TrainingJob) -> TrainResult | None:
    """Train ``job.arch`` in ``job.role`` (or reuse the model an earlier run trained on the same inputs);
    None on the ranks of DDP other than 0."""
    cfg, ctx, out = job.cfg, job.ctx, job.out
    prepared = data.load_prepared(job.data_dir)
    fp = fingerprint(cfg, job.role, prepared.digest, job.teacher_digest)
    if job.fresh:
        job.checkpoint.unlink(missing_ok=True)
    check_resumable(job.checkpoint, fp)  # a stale checkpoint stops here: no MLflow run, no cache build
    dist_info = info_from_env()
    entry = _reusable(job, fp, dist_info)
    if dist_info.is_main:  # fails fast on a bad tracking URI, before any training; only rank 0 talks to MLflow
        start_pipeline(cfg, ctx)
    tracker = ctx.tracker if dist_info.is_main else None
    tags = {"kdflow.role": job.role, "kdflow.arch": job.arch, "kdflow.data_digest": prepared.digest, **job.lineage}
    reused_from = reuse.source_of(entry) if entry is not None else None
    if reused_from is not None:
        tags["kdflow.reused_from_pipeline_run"] = str(reused_from.get("pipeline_run_id", ""))
    with record.training_run(tracker, ctx, job.step, cfg, prepared, tags) as run_id:
        if entry is not None:
            model, metrics = _restore(job, entry, tracker, run_id)
        else:
            torch.manual_seed(cfg.train.seed)
            model = models.build_model(job.arch, prepared.num_classes, prepared.in_channels, prepared.image_size[0])
            objective = job.objective_factory(model, prepared)
            on_epoch = with_snapshots(job, model, prepared, record.epoch_logger(tracker, run_id))
            fitted, cache_info = _fit(job, fp, model, objective, prepared, on_epoch)
            if not dist_info.is_main:
                return None
            metrics = _metrics(model, fitted, prepared, dist_info, cfg, cache_info)
            _write_outputs(
                model,
                job.arch,
                prepared,
                out,
                fitted,
                metrics,
                cfg,
                {"role": job.role, "data_digest": prepared.digest, **job.lineage},
            )
            if job.role == "teacher" and fitted.best_state is not None:
                save_variant(model, fitted.best_state, job.arch, prepared, out / TEACHER_CHECKPOINTS["best_val"])
            if cfg.storage.reuse and dist_info.world == 1:
                reuse.publish(reuse_store(cfg), job.role, fp, out, {"pipeline_run_id": ctx.pipeline_run_id})
        result: TrainResult = {
            "role": job.role,
            "arch": job.arch,
            "data_digest": prepared.digest,
            "metrics": metrics,
            "lineage": job.lineage,
            "fingerprint": fp,
            "parent_run_id": ctx.parent_run_id,
            "pipeline_run_id": ctx.pipeline_run_id,
            "config_hash": cfg.digest(),
            "artifact_uri": upload(ctx, job.step, out, UPLOADED),
        }
        if reused_from is not None:
            result["reused_from"] = reused_from
        model_tags = {**tags, "kdflow.pipeline_run_id": ctx.pipeline_run_id, "kdflow.config_hash": cfg.digest()}
        result = results.merged(
            result, record.trained_model(tracker, run_id, model, job.role, out, prepared, metrics, model_tags)
        )
        results.write(out, result)
    how = f"reused (trained by pipeline run {reused_from.get('pipeline_run_id') or '?'})" if reused_from else "trained"
    print(
        f"[{job.step}] {job.arch} {how}: test accuracy {metrics['test_accuracy']:.4f} "
        f"(val-selected {metrics['val_selected_test_accuracy']}) -> {out / 'model.pt'}"
    )
    return result


@timed(lambda b: "train_teacher" if b.arguments["role"] == "teacher" else "train_student_scratch")
def train(
    cfg: Config, role: str, data_dir: PathArg, out_dir: PathArg, ctx: RunContext | None = None, fresh: bool = False
) -> TrainResult | None:
    """Train the teacher (role='teacher') or the scratch baseline student (role='scratch').

    The scratch twin trains with ``scratch_twin``'s recipe where kdflow tune tuned it separately.
    """
    from kdflow.objective import SupervisedObjective

    if role == "scratch":
        cfg = cfg.scratch_config()
    arch = cfg.teacher.arch if role == "teacher" else cfg.student.arch
    job = TrainingJob(
        cfg,
        role,
        arch,
        Path(data_dir),
        Path(out_dir),
        ctx or RunContext(),
        lambda model, prepared: SupervisedObjective(training_attack(cfg, role, prepared)),
        fresh=fresh,
    )
    return train_model(job)


def training_attack(cfg: Config, role: str, prepared: data.PreparedData) -> TrainingAttack | None:
    """PGD against the model in training, for the roles that train adversarially (kdflow.fingerprint)."""
    if not trains_adversarially(cfg, role):
        return None
    return TrainingAttack(cfg.adversarial, prepared.mean, prepared.std, cfg.train.seed)


def load_teacher(source: str, num_classes: int, field: str = "teacher.source") -> tuple[nn.Module, dict]:
    return checkpoints.load_model(source, field=field, expect_classes=num_classes)


@timed("train_teacher")
def provide_teacher(
    cfg: Config, data_dir: PathArg, out_dir: PathArg, ctx: RunContext | None = None, fresh: bool = False
) -> TrainResult:
    """Train the teacher, or take the one ``teacher.source`` names (checkpoint path, s3:// or models:/ URI)."""
    ctx = ctx or RunContext()
    if not cfg.teacher.source:
        trained = train(cfg, "teacher", data_dir, out_dir, ctx, fresh)
        assert trained is not None, "the teacher step runs on one process"
        if "model_uri" in trained:
            trained = results.merged(
                trained, record.registered_teacher(ctx.tracker, cfg, trained["model_uri"], trained["data_digest"])
            )
            results.write(out_dir, trained)
        return trained
    out = Path(out_dir)
    start_pipeline(cfg, ctx)  # fails fast on a bad tracking URI
    prepared = data.load_prepared(data_dir)
    model, meta = load_teacher(cfg.teacher.source, prepared.num_classes)
    checkpoints.save_model(
        model,
        meta["arch"],
        meta["num_classes"],
        meta["in_channels"],
        meta["image_size"],
        out / "model.pt",
        extra={"role": "teacher", "source": cfg.teacher.source},
    )
    acc = evaluate.accuracy(evaluate.predict_logits(model, prepared.test, prepared.normalizer()), prepared.test.y)
    result: TrainResult = {
        "role": "teacher",
        "arch": meta["arch"],
        "data_digest": prepared.digest,
        "model_uri": cfg.teacher.source,
        "metrics": {"test_accuracy": acc, **models.model_report(model, tuple(prepared.train.x.shape[1:]))},
        "parent_run_id": ctx.parent_run_id,
        "pipeline_run_id": ctx.pipeline_run_id,
        "source": cfg.teacher.source,
    }
    atomic_write_json(out / "metrics.json", result["metrics"])
    results.write(out, result)
    write_resolved(cfg, out)
    print(f"[train_teacher] took teacher {cfg.teacher.source} ({meta['arch']}): test accuracy {acc:.4f}")
    return result


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


@timed(lambda b: "distill_student" if b.arguments["role"] == "distill" else f"distill_{b.arguments['role']}")
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
    from kdflow.objective import DistillObjective
    from kdflow.steps.teacher_cache import cache_factory

    num_classes = data.load_manifest(data_dir)["num_classes"]  # a missing manifest is a one-line error
    which = cfg.distill.teacher_checkpoint
    if cfg.distill.assistant is not None:
        teacher_path = _train_assistant(cfg, data_dir, teacher_path, Path(out_dir) / "assistant", ctx, fresh)
        which = "final"  # the student learns from the assistant's final weights
    teacher_path = chosen_teacher(str(teacher_path), which)
    teacher, teacher_meta = load_teacher(str(teacher_path), num_classes, "teacher")
    extra = [
        load_teacher(t.source, num_classes, f"distill.extra_teachers[{i}].source")[0]
        for i, t in enumerate(cfg.distill.extra_teachers)
    ]
    teachers = [teacher, *extra]

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
            tuple(prepared.train.x.shape[1:]),
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
        cache_factory(cfg, teacher, digests[0]) if cfg.distill.cache else None,
        teacher_digest=",".join(digests),
        fresh=fresh,
    )
    return train_model(job)
