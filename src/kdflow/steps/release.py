"""The release steps: export (with the final gate), register-and-promote, and the exit handler."""

from __future__ import annotations

from pathlib import Path

import torch

from kdflow.config import Config, write_resolved
from kdflow.data import prepared as data
from kdflow.errors import CheckpointError, GateError
from kdflow.evaluation.gate import Gate, failures, release_gate, verdict
from kdflow.infra import step_manifest
from kdflow.infra.io import atomic_write_bytes, atomic_write_json, atomic_write_text, sha256_file
from kdflow.infra.loaders import read_json_state
from kdflow.steps import record, results
from kdflow.steps.chain import check_link, student_sha256
from kdflow.steps.context import PathArg, RunContext, open_tracker, start_pipeline, upload
from kdflow.steps.evaluation import load_step_model
from kdflow.steps.results import ExportResult, PromotionResult, TrainResult
from kdflow.steps.timing import timed


def _evaluation_of(eval_dir: Path | None, student_sha: str, data_digest: str) -> dict | None:
    """The evaluation export takes its quality gate from, refused unless it evaluated this student on this data."""
    if eval_dir is None:
        return None
    step_manifest.verify(eval_dir, ("evaluate",), "--evaluation")
    evaluation = read_json_state(eval_dir / "evaluation.json", "--evaluation", "run `kdflow evaluate` again")
    check_link(
        evaluation, "--evaluation", eval_dir, student_sha, data_digest, "run `kdflow evaluate` with this --student"
    )
    return evaluation


def _decide_and_report(cfg: Config, exported: dict, evaluation: dict | None, eval_dir: Path | None, out: Path) -> Gate:
    """The final gate (the evaluation's quality checks, if any, plus parity); export.json, report and plots."""
    from kdflow.evaluation.report import render_report

    quality = evaluation["quality_gate"] if evaluation else None
    gate = release_gate(cfg.gate, quality, exported["parity_ok"], exported["parity_problems"])
    atomic_write_json(out / "export.json", {**exported, "gate": gate})
    if eval_dir is not None and evaluation is not None:
        atomic_write_text(out / "report.md", render_report(evaluation, exported, gate))
        for png in eval_dir.glob("*.png"):
            atomic_write_bytes(out / png.name, png.read_bytes())
    return gate


@timed("export")
def export_student(
    cfg: Config,
    data_dir: PathArg,
    student_dir: PathArg,
    eval_dir: PathArg | None,
    out_dir: PathArg,
    ctx: RunContext | None = None,
) -> dict:
    """Export the student, verify parity and speed, and decide the final gate (quality + parity).

    Returns the export report (``export.json``: forms, parity, gate).
    """
    from kdflow.release.deployed import deployed, ship_tokenizer
    from kdflow.release.export import export_all

    out = Path(out_dir)
    prepared = data.load_prepared(data_dir)
    ctx = start_pipeline(cfg, ctx or RunContext())
    student = load_step_model(Path(student_dir), prepared.num_classes, "student")
    student_info: dict = dict(results.read(student_dir, TrainResult) or {})
    student_sha = student_sha256(Path(student_dir))
    evaluation = _evaluation_of(Path(eval_dir) if eval_dir else None, student_sha, prepared.digest)  # before writing
    step_manifest.claim(out, "export")
    torch.manual_seed(cfg.train.seed)
    model, seen = deployed(student, prepared)  # a model on named inputs is exported on its own inputs alone
    ship_tokenizer(seen, out)
    exported = export_all(
        model,
        seen,
        cfg.export,
        cfg.evaluate,
        out,
        source_model=student_info.get("model_uri", str(Path(student_dir) / "model.pt")),
        seed=cfg.train.seed,
    )
    if cfg.adversarial.evaluate and prepared.inputs is None:  # pixel-space attacks: images only
        from kdflow.evaluation.robustness import export_robustness

        export_robustness(student, prepared, cfg.adversarial, out, exported["forms"])
    exported.update(student_sha256=student_sha, data_digest=prepared.digest)
    exported["gate"] = _decide_and_report(cfg, exported, evaluation, Path(eval_dir) if eval_dir else None, out)
    gate = exported["gate"]
    write_resolved(cfg, out)
    result: ExportResult = {
        "gate": gate,
        "gate_passed": gate["passed"],
        "parity_ok": exported["parity_ok"],
        "student_model_uri": student_info.get("model_uri"),
        "student_sha256": student_sha,
        "data_digest": prepared.digest,
        "parent_run_id": ctx.parent_run_id,
        "pipeline_run_id": ctx.pipeline_run_id,
        "artifact_uri": upload(ctx, "export", out),
    }
    result = results.merged(
        result,
        record.export(
            ctx.tracker,
            ctx,
            prepared,
            exported,
            gate,
            out,
            student_info.get("model_id", ""),
            result["student_model_uri"],
        ),
    )
    inputs = {"data_digest": prepared.digest, "student_sha256": student_sha}
    if eval_dir:
        inputs["evaluation_sha256"] = sha256_file(Path(eval_dir) / "evaluation.json")
    results.write(out, result, inputs)
    parity = "ok" if exported["parity_ok"] else exported["parity_problems"]
    print(f"[export] gate {verdict(gate)}; parity {parity}")
    return exported


def _promotable(
    student_dir: PathArg, export_dir: PathArg, force: bool, data_digest: str, student_sha: str
) -> tuple[dict, dict]:
    """The student and export results, refused (one line) unless the recorded gate passed or ``force``, and
    always unless the export is of this student on this data (``force`` overrides the gate, not the chain)."""
    step_manifest.verify(Path(student_dir), step_manifest.MODEL_STEPS, "--student")
    step_manifest.verify(Path(export_dir), ("export",), "--export", required=not force)
    student_info: dict = dict(results.read(student_dir, TrainResult) or {})
    export_info = results.read(export_dir, ExportResult)
    if export_info is None and not force:
        raise CheckpointError(
            "--export",
            f"'{export_dir}' holds no export result (step.json)",
            "pass the output directory of `kdflow export`",
        )
    gate = export_info.get("gate") if export_info else None
    if not force and (gate is None or not gate["passed"]):
        state = "was not recorded" if gate is None else f"is {verdict(gate)} ({failures(gate)})"
        raise GateError(
            "gate",
            f"the release gate of '{export_dir}' {state}",
            "fix the student and export again with --evaluation; --force overrides (recorded on "
            "the version and the run)",
        )
    if "model_uri" not in student_info or "run_id" not in student_info:
        raise CheckpointError(
            "--student",
            f"'{student_dir}' has no MLflow model to register (trained with tracking off?)",
            "re-run the distill step with tracking enabled",
        )
    if export_info is not None:
        check_link(
            dict(export_info),
            "--export",
            Path(export_dir),
            student_sha,
            data_digest,
            "run `kdflow export` with this --student",
        )
    return student_info, dict(export_info or {})


def _known_to(tracker, student_info: dict) -> None:
    """The student's run and model must be on this tracking server (not one the student was trained against)."""
    from mlflow.exceptions import MlflowException

    try:
        tracker.client.get_run(student_info["run_id"])
        if student_info.get("model_id"):
            tracker.client.get_logged_model(student_info["model_id"])
    except MlflowException:
        raise CheckpointError(
            "--student",
            f"its MLflow run {student_info['run_id']} is unknown to the tracking server {tracker.uri}",
            "promote against the tracking server that trained it (MLFLOW_TRACKING_URI or tracking.uri)",
        ) from None


@timed("register_and_promote")
def promote(
    cfg: Config,
    data_dir: PathArg,
    student_dir: PathArg,
    export_dir: PathArg,
    out_dir: PathArg,
    ctx: RunContext | None = None,
    force: bool = False,
) -> PromotionResult:
    """Register the distilled student as challenger; move champion only when its gate passed and it wins.

    The gate export recorded is enforced here, where the decision is made: a failed, incomplete or
    missing gate is refused unless ``force`` (then tagged ``kdflow.forced`` on the version and the run).
    """
    from kdflow.release.registry import promotion_split, register_and_promote

    out = Path(out_dir)
    ctx = start_pipeline(cfg, ctx or RunContext())
    tracker = ctx.tracker
    prepared = data.load_prepared(data_dir)
    student_sha = student_sha256(Path(student_dir))
    student_info, export_info = _promotable(student_dir, export_dir, force, prepared.digest, student_sha)
    if tracker is not None:
        _known_to(tracker, student_info)
        promotion_split(prepared)  # a dataset without a release split is refused before anything is written
    step_manifest.claim(out, "register_and_promote")
    inputs = {"data_digest": prepared.digest, "student_sha256": student_sha}
    if (Path(export_dir) / "export.json").is_file():
        inputs["export_sha256"] = sha256_file(Path(export_dir) / "export.json")
    if tracker is None:
        decision: PromotionResult = {"promoted": False, "reason": "tracking disabled: no registry"}
        atomic_write_json(out / "promotion.json", decision)
        step_manifest.complete(out, inputs)
        return decision
    model_uri = student_info["model_uri"]
    if cfg.export.promote_format == "onnx_int8" and export_info.get("onnx_int8_model_id"):
        model_uri = f"models:/{export_info['onnx_int8_model_id']}"
    tags = {
        "kdflow.data_digest": prepared.digest,
        "kdflow.pipeline_run_id": ctx.pipeline_run_id,
        "kdflow.config_hash": cfg.digest(),
        **{k: str(v) for k, v in student_info.get("lineage", {}).items() if k.startswith("kdflow.teacher")},
    }
    with tracker.step_run("register_and_promote", ctx.parent_run_id, ctx.pipeline_run_id):
        decision = register_and_promote(  # type: ignore[assignment]  # a PromotionResult
            tracker, model_uri, cfg.tracking.registered_model, prepared, student_info["run_id"], cfg.gate, tags, force
        )
        tracker.mlflow.set_tags(
            {
                "kdflow.promoted": str(decision["promoted"]),
                "kdflow.reason": decision["reason"],
                "kdflow.forced": str(force).lower(),
            }
        )
    atomic_write_json(out / "promotion.json", decision)
    step_manifest.complete(out, inputs)
    print(f"[promote] {decision['reason']}")
    return decision


def finalize(cfg: Config, pipeline_run_id: str, status: str) -> dict:
    """Exit handler: close the parent run (and any child left open) with the pipeline's final status."""
    tracker = open_tracker(cfg)
    if tracker is None:
        return {"closed": 0}
    from kdflow.infra.tracking import PIPELINE_TAG

    mlflow_status = {"SUCCEEDED": "FINISHED", "FINISHED": "FINISHED", "CANCELLED": "KILLED"}.get(
        status.upper(), "FAILED"
    )
    runs = tracker.client.search_runs(
        [tracker.experiment_id], filter_string=f"tags.`{PIPELINE_TAG}` = '{pipeline_run_id}'"
    )
    closed = 0
    for r in runs:
        if r.info.status == "RUNNING":
            tracker.client.set_tag(r.info.run_id, "kdflow.pipeline_status", status)
            tracker.finish(r.info.run_id, mlflow_status)
            closed += 1
    return {"closed": closed, "status": mlflow_status}
