"""The teacher step: train the teacher, or take the one teacher.source names."""

from __future__ import annotations

from pathlib import Path

from kdflow.config import Config, write_resolved
from kdflow.data import prepared as data
from kdflow.evaluation import metrics as evaluate
from kdflow.infra import checkpoints, step_manifest
from kdflow.infra.io import atomic_write_json, sha256_file
from kdflow.models import zoo as models
from kdflow.models.inputs import Selected, check_same_inputs
from kdflow.steps import record, results
from kdflow.steps.context import PathArg, RunContext, start_pipeline
from kdflow.steps.results import TrainResult
from kdflow.steps.timing import timed
from kdflow.steps.train import load_teacher, train


def _onnx_note(model) -> dict[str, str]:
    from kdflow.models.onnx_teacher import OnnxTeacher

    if not isinstance(model, OnnxTeacher):
        return {}
    return {
        "onnx_outputs": "probabilities (taken as log-probabilities)" if bool(model.outputs_probabilities) else "logits"
    }


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
    model, meta = load_teacher(cfg.teacher.source, prepared.num_classes, input_shape=prepared.input_shape)
    if prepared.inputs is not None or isinstance(model, Selected):
        check_same_inputs(model, prepared.inputs, "teacher.source")
    # a provided teacher's identity is its source's bytes: another teacher's files never stay beside it
    source_sha = sha256_file(checkpoints.resolve_source(cfg.teacher.source, "teacher.source"))
    step_manifest.claim(out, "train_teacher", {"teacher.source_sha256": source_sha}, fresh)
    checkpoints.save_model(
        model,
        meta["arch"],
        meta["num_classes"],
        meta["in_channels"],
        meta["image_size"],
        out / "model.pt",
        extra={"role": "teacher", "source": cfg.teacher.source, **_onnx_note(model)},
    )
    acc = evaluate.accuracy(evaluate.predict_logits(model, prepared.test, prepared.normalizer()), prepared.test.y)
    result: TrainResult = {
        "role": "teacher",
        "arch": meta["arch"],
        "data_digest": prepared.digest,
        "model_uri": cfg.teacher.source,
        "metrics": {"test_accuracy": acc, **models.model_report(model, prepared.input_shape)},
        "parent_run_id": ctx.parent_run_id,
        "pipeline_run_id": ctx.pipeline_run_id,
        "source": cfg.teacher.source,
    }
    atomic_write_json(out / "metrics.json", result["metrics"])
    write_resolved(cfg, out)
    results.write(out, result, {"data_digest": prepared.digest, "teacher_sha256": source_sha})
    print(f"[train_teacher] took teacher {cfg.teacher.source} ({meta['arch']}): test accuracy {acc:.4f}")
    return result
