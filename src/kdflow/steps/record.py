"""MLflow logging of each step's results. Steps compute; these functions record what they computed.

Every function takes the tracker (None when tracking is off, which makes it a no-op) and returns the
ids it created, so the step can put them in its result.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kdflow.config import Config
from kdflow.data.prepared import PreparedData
from kdflow.evaluation.gate import Gate
from kdflow.infra.tracking import CONSTANT_COLUMNS, Tracker
from kdflow.steps.context import RunContext


def prep(tracker: Tracker | None, ctx: RunContext, cfg: Config, manifest: dict, out: Path) -> dict[str, str]:
    if tracker is None or ctx.parent_run_id is None:
        return {}
    tracker.client.set_tag(ctx.parent_run_id, "kdflow.data_digest", manifest["digest"])
    with tracker.step_run("prep_data", ctx.parent_run_id, ctx.pipeline_run_id) as run_id:
        tracker.log_config(run_id, cfg)
        for split in ("train", "val", "test", "release"):
            tracker.log_dataset(manifest, manifest["source"], split)
        tracker.log_artifact(run_id, out / "manifest.json")  # lists the tolerated bad files, if any
        tracker.log_metrics(
            run_id,
            {"bad_files": len(manifest["bad_files"]), "test_duplicates_in_train": manifest["test_duplicates_in_train"]},
        )
    return {"run_id": run_id}


@contextlib.contextmanager
def training_run(
    tracker: Tracker | None,
    ctx: RunContext,
    step: str,
    cfg: Config,
    prepared: PreparedData,
    tags: dict[str, str],
    splits: tuple[str, ...] = ("train", "val"),
) -> Iterator[str | None]:
    """The step's MLflow run (ended FAILED if the body raises), with its config and the datasets it read."""
    if tracker is None:
        yield None
        return
    with tracker.step_run(step, ctx.parent_run_id, ctx.pipeline_run_id, tags) as run_id:
        tracker.log_config(run_id, cfg)
        for split in splits:
            tracker.log_dataset(prepared.manifest, prepared.manifest["source"], split)
        yield run_id


def epoch_logger(tracker: Tracker | None, run_id: str | None) -> Callable[[dict], None] | None:
    if tracker is None or run_id is None:
        return None
    return lambda row: tracker.log_history(run_id, [row])


def trained_model(
    tracker: Tracker | None,
    run_id: str | None,
    model,
    role: str,
    out: Path,
    prepared: PreparedData,
    metrics: dict[str, Any],
    tags: dict[str, str],
) -> dict[str, str]:
    """Final metrics, history and the model as a LoggedModel (kdflow's weights-only checkpoint rides along)."""
    if tracker is None or run_id is None:
        return {}
    tracker.log_metrics(run_id, {k: v for k, v in metrics.items() if v is not None and k not in CONSTANT_COLUMNS})
    if (out / "history.csv").is_file():
        tracker.log_artifact(run_id, out / "history.csv")
    example = prepared.test.x[:2].float().numpy() / 255.0
    model_id = tracker.log_torch_model(model, name=role, input_example=example, checkpoint=out / "model.pt", tags=tags)
    return {"run_id": run_id, "model_id": model_id, "model_uri": f"models:/{model_id}"}


def generator(tracker: Tracker | None, run_id: str | None, out: Path) -> None:
    """The data-free generator's weights and a grid of its images, on the distill step's run."""
    if tracker is None or run_id is None:
        return
    for f in ("generator.pt", "generator_samples.png"):
        tracker.log_artifact(run_id, out / f, "generator")


def registered_teacher(tracker: Tracker | None, cfg: Config, model_uri: str, data_digest: str) -> dict[str, str]:
    if tracker is None:
        return {}
    version = tracker.mlflow.register_model(
        model_uri, cfg.tracking.teacher_registered_model, tags={"kdflow.data_digest": data_digest}
    )
    return {
        "registered_version": str(version.version),
        "registered_uri": f"models:/{cfg.tracking.teacher_registered_model}/{version.version}",
    }


def evaluation(
    tracker: Tracker | None, ctx: RunContext, prepared: PreparedData, summary: dict, out: Path
) -> dict[str, str]:
    if tracker is None:
        return {}
    with tracker.step_run("evaluate", ctx.parent_run_id, ctx.pipeline_run_id) as run_id:
        tracker.log_dataset(prepared.manifest, prepared.manifest["source"], "test")
        for name, r in summary["models"].items():
            scalars = {k: v for k, v in r.items() if not isinstance(v, list) and v is not None}
            tracker.log_metrics(run_id, scalars, prefix=f"{name}.")
            curve = {f"pgd_accuracy_eps_{c['eps']:g}": c["pgd_accuracy"] for c in r.get("robustness_curve", [])}
            tracker.log_metrics(run_id, curve, prefix=f"{name}.robustness_curve.")
        for i, member in enumerate(summary.get("teacher_members", [])):  # the ensemble's members, one by one
            tracker.log_metrics(run_id, member, prefix=f"teacher_member_{i}.")
        tracker.log_dataset(prepared.manifest, prepared.manifest["source"], "release")
        for k in (
            "transfer_rate",
            "kd_gain",
            "kd_gain_val",
            "kd_gain_release",
            "robust_gain",
            "kd_gain_vs_selftrain",
            "kd_gain_release_vs_selftrain",
        ):
            if summary.get(k) is not None:
                tracker.log_metrics(run_id, {k: summary[k]})
        for f in (
            "evaluation.json",
            "report.md",
            "reliability.png",
            "loss_curves.png",
            *[f"confusion_{n}.png" for n in summary["models"]],
            *[f for f in ("robustness.png", "generator_samples.png") if (out / f).is_file()],
        ):
            tracker.log_artifact(run_id, out / f, "evaluation")
    return {"run_id": run_id}


def export(
    tracker: Tracker | None,
    ctx: RunContext,
    prepared: PreparedData,
    exported: dict,
    gate: Gate,
    out: Path,
    student_model_id: str,
    student_model_uri: str | None,
) -> dict[str, str]:
    """Export metrics, manifests, the report (also on the parent run) and the int8 ONNX as a LoggedModel."""
    if tracker is None:
        return {}
    ids: dict[str, str] = {}
    with tracker.step_run(
        "export", ctx.parent_run_id, ctx.pipeline_run_id, {"kdflow.student_model_id": student_model_id}
    ) as run_id:
        for form, r in exported["forms"].items():
            tracker.log_metrics(run_id, {k: v for k, v in r.items() if k != "manifest"}, prefix=f"{form}.")
        tracker.log_metrics(run_id, {"gate_passed": float(gate["passed"]), "parity_ok": float(exported["parity_ok"])})
        tracker.log_artifact(run_id, out / "export.json")
        for f in out.glob("*.manifest.json"):
            tracker.log_artifact(run_id, f, "manifests")
        if (out / "report.md").is_file():
            tracker.log_artifact(run_id, out / "report.md")
            if ctx.parent_run_id:
                tracker.log_artifact(ctx.parent_run_id, out / "report.md")
        if "onnx_int8" in exported["forms"]:
            example = (prepared.test.x[:2].float().numpy() / 255.0).astype("float32")
            ids["onnx_int8_model_id"] = tracker.log_onnx_model(
                out / "student.int8.onnx",
                "student_int8",
                example,
                {"kdflow.source_model": student_model_uri or "", "kdflow.data_digest": prepared.digest},
            )
        ids["run_id"] = run_id
    return ids
