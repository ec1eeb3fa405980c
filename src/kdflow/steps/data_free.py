"""The distill step without data (``distill.data_free``): the teacher, a generator, no training image.

Only ``manifest.json`` and the test split (and the val split when the directory holds it, for the
per-epoch report) are opened; the training split's file is never read, so a directory without it works.
"""

from __future__ import annotations

from pathlib import Path

import torch

from kdflow.config import Config, write_resolved
from kdflow.data import prepared as data
from kdflow.data.batches import Split
from kdflow.evaluation import metrics as evaluate
from kdflow.infra import checkpoints, step_manifest
from kdflow.infra.fingerprint import fingerprint
from kdflow.infra.io import atomic_torch_save, atomic_write_json, atomic_write_text, csv_text, sha256_file
from kdflow.models import zoo as models
from kdflow.steps import record, results
from kdflow.steps.context import RunContext, start_pipeline, upload
from kdflow.steps.results import TrainResult
from kdflow.training.data_free import DataFreeState, build_generator, fit_data_free, plot_samples
from kdflow.training.generator_memory import check_generator_fits
from kdflow.training.trainer import check_resumable

UPLOADED = ["model.pt", "generator.pt", "generator_samples.png", "history.csv", "metrics.json", "config.resolved.yaml"]


def reporting_data(data_dir: Path) -> data.PreparedData:
    """The prepared dataset without its training images: an empty train split, val when present, test."""
    manifest = data.load_manifest(data_dir)
    test = data.load_split(data_dir, "test")
    empty = Split(test.x[:0], test.y[:0])
    val = data.load_split(data_dir, "val") if data.has_split(data_dir, "val") else empty
    return data.PreparedData(
        empty, val, test, manifest["class_names"], tuple(manifest["mean"]), tuple(manifest["std"]), manifest
    )


def _metrics(cfg: Config, model, fitted, prepared: data.PreparedData, generator) -> dict:
    g = cfg.distill.generator
    history = fitted.history
    images = g.iterations * (g.student_steps + 1) * g.batch
    return {
        "test_accuracy": evaluate.accuracy(
            evaluate.predict_logits(model, prepared.test, prepared.normalizer()), prepared.test.y
        ),
        "val_selected_test_accuracy": None,  # no real image selects anything: the final weights are the output
        "final_val_accuracy": history[-1].get("val_acc") if history else None,
        **models.model_report(model, tuple(prepared.test.x.shape[1:])),
        "epochs": len(history),
        "data_free": True,
        "real_training_images_read": 0,
        "generated_images": images,
        "teacher_forward_images": images,  # student steps: no-grad forwards; generator steps: forward + backward
        "generator_parameters": models.num_parameters(generator),
        "seconds_per_epoch": (sum(h["seconds"] for h in history) / len(history)) if history else 0.0,
        "seconds": sum(h["seconds"] for h in history),
    }


def distill_data_free(
    cfg: Config,
    data_dir: Path,
    teacher: torch.nn.Module,
    teacher_path: str,
    lineage: dict[str, str],
    out: Path,
    ctx: RunContext,
    fresh: bool = False,
) -> TrainResult:
    """Train ``student.arch`` from ``teacher`` by DFAD; writes model.pt, generator.pt and the samples plot."""
    prepared = reporting_data(data_dir)
    channels, side = int(prepared.test.x.shape[1]), int(prepared.test.x.shape[2])
    check_generator_fits(cfg.distill.generator, channels, side)
    teacher_digest = sha256_file(checkpoints.resolve_source(teacher_path, "teacher"))
    fp = fingerprint(cfg, "distill", prepared.digest, teacher_digest)
    ckpt = out / "train_state" / "checkpoint.pt"
    step_manifest.claim(out, "distill_student", fp, fresh)
    if fresh:
        ckpt.unlink(missing_ok=True)
    check_resumable(ckpt, fp)
    start_pipeline(cfg, ctx)  # threads: train.num_threads, else the CPU quota
    torch.manual_seed(cfg.train.seed)
    student = models.build_model(cfg.student.arch, prepared.num_classes, channels, side)
    generator = build_generator(cfg.distill.generator, channels, side)
    tags = {
        "kdflow.role": "distill",
        "kdflow.arch": cfg.student.arch,
        "kdflow.data_digest": prepared.digest,
        "kdflow.data_free": "true",
        **lineage,
    }
    step = "distill_student"
    with record.training_run(ctx.tracker, ctx, step, cfg, prepared, tags, splits=("test",)) as run_id:
        st = DataFreeState(student, teacher, generator, cfg, prepared.mean, prepared.std)
        val = prepared.val if len(prepared.val) else None
        fitted = fit_data_free(st, val, ckpt, fp, record.epoch_logger(ctx.tracker, run_id), step)
        metrics = _metrics(cfg, student, fitted, prepared, generator)
        extra = {"role": "distill", "data_digest": prepared.digest, "data_free": True, **lineage}
        checkpoints.save_model(
            student, cfg.student.arch, prepared.num_classes, channels, side, out / "model.pt", extra=extra
        )
        atomic_torch_save(
            {
                "state_dict": generator.state_dict(),
                "config": cfg.distill.generator.model_dump(),
                "channels": channels,
                "image_size": side,
            },
            out / "generator.pt",
        )
        plot_samples(generator, teacher, st, prepared.class_names, out / "generator_samples.png")
        if fitted.history:
            atomic_write_text(out / "history.csv", csv_text(fitted.history))
        atomic_write_json(out / "history.json", fitted.history)
        atomic_write_json(out / "metrics.json", metrics)
        write_resolved(cfg, out)
        result: TrainResult = {
            "role": "distill",
            "arch": cfg.student.arch,
            "data_digest": prepared.digest,
            "metrics": metrics,
            "lineage": lineage,
            "fingerprint": fp,
            "parent_run_id": ctx.parent_run_id,
            "pipeline_run_id": ctx.pipeline_run_id,
            "config_hash": cfg.digest(),
            "artifact_uri": upload(ctx, step, out, UPLOADED),
            "started": results.started(fitted.resumed_from),
        }
        model_tags = {**tags, "kdflow.pipeline_run_id": ctx.pipeline_run_id, "kdflow.config_hash": cfg.digest()}
        result = results.merged(
            result, record.trained_model(ctx.tracker, run_id, student, "distill", out, prepared, metrics, model_tags)
        )
        record.generator(ctx.tracker, run_id, out)
        results.write(out, result, {"data_digest": prepared.digest, "teacher_sha256": teacher_digest})
    print(
        f"[{step}] {cfg.student.arch} {results.describe_start(result['started'])} (data-free, no training image "
        f"read): test accuracy "
        f"{metrics['test_accuracy']:.4f} after {cfg.distill.generator.iterations} generator steps -> {out / 'model.pt'}"
    )
    return result
