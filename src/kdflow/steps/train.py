"""The training steps' common body (train_model: fresh, resumed or reused) and the teacher/scratch step.

prep lives in :mod:`kdflow.steps.prep`, a provided teacher in :mod:`kdflow.steps.teacher`, distillation in
:mod:`kdflow.steps.distill`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from kdflow.config import Config, write_resolved
from kdflow.data import prepared as data
from kdflow.data.text import encoder_weights
from kdflow.data.transfer_set import with_pool
from kdflow.evaluation import metrics as evaluate
from kdflow.infra import checkpoints, reuse, running, step_manifest
from kdflow.infra.fingerprint import fingerprint, trains_adversarially
from kdflow.infra.io import atomic_write_json, atomic_write_text, csv_text, sha256_file
from kdflow.infra.pretrained import default_weights, start_from, weights_file
from kdflow.models import zoo as models
from kdflow.models.inputs import build_for_data
from kdflow.steps import record, results
from kdflow.steps.context import PathArg, RunContext, start_pipeline, upload
from kdflow.steps.preflight import check_transfer_set
from kdflow.steps.results import TrainResult
from kdflow.steps.teacher_checkpoints import TEACHER_CHECKPOINTS, save_variant, snapshot_files, with_snapshots
from kdflow.steps.timing import timed
from kdflow.steps.train_view import with_train_view
from kdflow.training.adversarial import TrainingAttack
from kdflow.training.distributed import LR_SCALING_RULE, DistInfo, info_from_env
from kdflow.training.trainer import FitResult, check_resumable, fit

STEP_NAMES = {
    "teacher": "train_teacher",
    "scratch": "train_student_scratch",
    "distill": "distill_student",
    "assistant": "distill_assistant",
    "selftrain": "train_student_selftrain",
    "labels_only": "distill_student_labels_only",
}
UPLOADED = ["model.pt", "history.csv", "metrics.json", "config.resolved.yaml"]
ObjectiveFactory = Callable[[nn.Module, data.PreparedData], nn.Module]
CacheFactory = Callable[[data.PreparedData], tuple[Any, dict]]


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
        **models.model_report(model, prepared.input_shape),
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
    transfer_set: bool = False  # distillation: train also on the data's unlabeled pool (the teacher labels it)

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
    return reuse.lookup(reuse_store(job.cfg), job.role, fp, job.arch)


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


def _section_name(role: str) -> str:
    return "teacher" if role == "teacher" else "student"


def train_model(job: TrainingJob) -> TrainResult | None:
    """Train ``job.arch`` in ``job.role`` (or reuse the model an earlier run trained on the same inputs);
    None on the ranks of DDP other than 0."""
    cfg, ctx, out = job.cfg, job.ctx, job.out
    prepared = data.load_prepared(job.data_dir)
    if job.transfer_set and prepared.manifest["counts"].get("unlabeled"):
        check_transfer_set(cfg, job.role)  # before anything is written
        pool = data.load_split(job.data_dir, "unlabeled")  # read here only: no other step opens the pool
        job.lineage["kdflow.transfer_set"] = str(len(pool))
        prepared = replace(prepared, train=with_pool(prepared.train, pool))
    if job.role == "scratch" and cfg.scratch_twin.augment is not None:  # its own view, tuned apart (kdflow tune)
        prepared = with_train_view(prepared, cfg.data)
    fp = fingerprint(cfg, job.role, prepared.digest, job.teacher_digest, prepared.manifest.get("augmentation"))
    name = _section_name(job.role)
    section = getattr(cfg, name)
    pretrained = default_weights(job.arch, section.weights) or encoder_weights(job.arch)  # weights=, hf:, minilm
    if pretrained:  # the pretrained start is part of what the weights are: by content, not by path
        fp[f"{name}.weights_sha256"] = sha256_file(weights_file(pretrained, f"{name}.weights"))
    torch.manual_seed(cfg.train.seed)  # the model is built before anything is written: a bad arch or input is one line
    fresh_model = build_for_data(
        job.arch,
        prepared.num_classes,
        prepared.input_shape,
        prepared.inputs,
        section.inputs,
        f"{name}.inputs",
        prepared.manifest["dataset"],
    )
    dist_info = info_from_env()
    if dist_info.is_main:  # another run's outputs are refused (or removed with --fresh) before anything is written
        step_manifest.claim(out, job.step, fp, job.fresh)
    if job.fresh:
        job.checkpoint.unlink(missing_ok=True)
    entry = _reusable(job, fp, dist_info)
    kept = None  # the last epoch kept in state_dir too: a retried pod's new, empty out resumes it
    if entry is None and cfg.storage.carry_checkpoint and dist_info.world == 1:
        kept = running.open_kept(
            cfg.storage.state_dir, job.role, reuse.key(fp), out, job.checkpoint, job.fresh, job.step
        )
    check_resumable(job.checkpoint, fp)  # a stale checkpoint stops here: no MLflow run, no cache build
    if dist_info.is_main:  # fails fast on a bad tracking URI, before any training; only rank 0 talks to MLflow
        start_pipeline(cfg, ctx)
    tracker = ctx.tracker if dist_info.is_main else None
    tags = {"kdflow.role": job.role, "kdflow.arch": job.arch, "kdflow.data_digest": prepared.digest, **job.lineage}
    reused_from = reuse.source_of(entry) if entry is not None else None
    if reused_from is not None:
        tags["kdflow.reused_from_pipeline_run"] = str(reused_from.get("pipeline_run_id", ""))
    start = results.started(None, reused_from)
    with record.training_run(tracker, ctx, job.step, cfg, prepared, tags) as run_id:
        if entry is not None:
            model, metrics = _restore(job, entry, tracker, run_id)
        else:
            model = fresh_model
            if pretrained:
                started = start_from(
                    model,
                    pretrained,
                    section.finetune,
                    section.backbone_lr_mult,
                    prepared.num_classes,
                    f"{name}.weights",
                    section.finetune_layers,
                )
                print(f"[{job.step}] pretrained {pretrained}: {started['said']}")
            objective = job.objective_factory(model, prepared)
            on_epoch = with_snapshots(job, model, prepared, record.epoch_logger(tracker, run_id))
            if kept is not None:
                on_epoch = running.keeper(kept, out, job.checkpoint, snapshot_files, on_epoch)
            fitted, cache_info = _fit(job, fp, model, objective, prepared, on_epoch)
            start = results.started(fitted.resumed_from)
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
                {"role": job.role, "data_digest": prepared.digest, "fingerprint_key": reuse.key(fp), **job.lineage},
            )
            if job.role == "teacher" and fitted.best_state is not None:
                save_variant(model, fitted.best_state, job.arch, prepared, out / TEACHER_CHECKPOINTS["best_val"])
            if kept is not None:
                running.drop(kept)
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
            "started": start,
        }
        if reused_from is not None:
            result["reused_from"] = reused_from
        model_tags = {**tags, "kdflow.pipeline_run_id": ctx.pipeline_run_id, "kdflow.config_hash": cfg.digest()}
        result = results.merged(
            result, record.trained_model(tracker, run_id, model, job.role, out, prepared, metrics, model_tags)
        )
        results.write(out, result, {"data_digest": prepared.digest, "teacher_sha256": job.teacher_digest})
        if entry is None and cfg.storage.reuse and dist_info.world == 1:  # exactly the manifest's files
            source = {"pipeline_run_id": ctx.pipeline_run_id}
            reuse.publish(reuse_store(cfg), job.role, fp, out, source, cfg.storage.reuse_max_gb)
    print(
        f"[{job.step}] {job.arch} {results.describe_start(start)}: test accuracy {metrics['test_accuracy']:.4f} "
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
    from kdflow.training.objective import SupervisedObjective

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
    """PGD against the model in training, for the roles that train adversarially (kdflow.infra.fingerprint)."""
    if not trains_adversarially(cfg, role):
        return None
    return TrainingAttack(cfg.adversarial, prepared.mean, prepared.std, cfg.train.seed)


def load_teacher(
    source: str, num_classes: int, field: str = "teacher.source", input_shape: tuple[int, ...] | None = None
) -> tuple[nn.Module, dict]:
    """A kdflow checkpoint, or (with the data's ``input_shape``) an ONNX file: a black-box teacher."""
    from kdflow.infra.onnx_file import is_onnx, load_onnx_teacher

    if is_onnx(source) and input_shape is not None:
        model = load_onnx_teacher(checkpoints.resolve_source(source, field), num_classes, input_shape, field)
        meta = {
            "arch": "onnx",
            "num_classes": num_classes,
            "in_channels": input_shape[0],
            "image_size": input_shape[-1],
        }
        return model, meta
    return checkpoints.load_model(source, field=field, expect_classes=num_classes)
