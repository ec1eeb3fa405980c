"""The pipeline steps as plain functions over local directories; the CLI and the KFP components call these.

Every step writes its outputs and ``config.resolved.yaml`` into ``out_dir`` plus ``step.json`` (what
later steps and lineage need: digests, architecture, MLflow run and model ids).
"""

from __future__ import annotations

import contextlib
import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kdflow import checkpoints, data, evaluate, models
from kdflow.config import Config, write_resolved
from kdflow.errors import CheckpointError
from kdflow.io import atomic_write_json, atomic_write_text, read_json


@dataclass
class RunContext:
    """Who is running: the pipeline run id and the MLflow parent run (None when tracking is off)."""

    pipeline_run_id: str = "local"
    parent_run_id: str | None = None
    # Opened (and checked) once by start_pipeline, then reused by the step: one S3 HEAD and one MLflow client per step.
    store: object | None = field(default=None, repr=False, compare=False)
    tracker: object | None = field(default=None, repr=False, compare=False)
    opened: bool = field(default=False, repr=False, compare=False)


def _register_uri_handlers() -> None:
    from kdflow.storage import s3_model_resolver, s3_source_resolver

    data.register_source_resolver("s3", s3_source_resolver)
    checkpoints.register_model_resolver("s3", s3_model_resolver)


_register_uri_handlers()


def storage_root(cfg: Config) -> str | None:
    return cfg.storage.root or os.environ.get("KDFLOW_STORAGE_ROOT") or None


def _store(cfg: Config):
    """The artifact store (local dir or s3://), checked before any work; None when not configured."""
    root = storage_root(cfg)
    if not root:
        return None
    from kdflow.storage import open_store

    store = open_store(root)
    store.check()
    return store


def _upload(cfg: Config, ctx: RunContext, step: str, out: Path, files: list[str] | None = None) -> str | None:
    """Copy a step's outputs to <storage root>/<pipeline run id>/<step>/ (verified); returns that URI."""
    store = ctx.store if ctx.opened else _store(cfg)
    if store is None:
        return None
    from kdflow.storage import put_dir

    prefix = f"{ctx.pipeline_run_id}/{step}"
    if files is None:
        put_dir(store, out, prefix)
    else:
        for f in files:
            if (out / f).is_file():
                store.put_file(out / f, f"{prefix}/{f}")
    return f"{store.uri.rstrip('/')}/{prefix}"


def _tracker(cfg: Config):
    if not cfg.tracking.enabled:
        return None
    from kdflow.tracking import Tracker, resolve_model_uri

    tracker = Tracker(cfg)
    checkpoints.register_model_resolver("models", resolve_model_uri)
    checkpoints.register_model_resolver("runs", resolve_model_uri)
    return tracker


def _step_info(out_dir: Path) -> dict:
    return read_json(out_dir / "step.json") if (out_dir / "step.json").is_file() else {}


def _write_history_csv(history: list[dict], path: Path) -> None:
    if not history:
        return
    import io

    keys = sorted({k for row in history for k in row})
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(history)
    atomic_write_text(path, buf.getvalue())


def start_pipeline(cfg: Config, ctx: RunContext, image: str = "") -> tuple[object | None, RunContext]:
    """Open the tracker and get-or-create the MLflow parent run of this pipeline run (by its id tag).

    Every step does this, so a step whose predecessors were served from KFP's cache still lands
    under this run's parent.
    """
    if not ctx.opened:
        ctx.store = _store(cfg)  # fails fast on bad S3 credentials, a missing bucket or a malformed URI
        ctx.tracker = _tracker(cfg)
        ctx.opened = True
    tracker = ctx.tracker
    if tracker is None or ctx.parent_run_id:
        return tracker, ctx
    from kdflow.tracking import git_sha

    ctx.parent_run_id = tracker.parent_run(ctx.pipeline_run_id, {
        "kdflow.pipeline_name": "kdflow-distillation", "kdflow.git_sha": git_sha(),
        "kdflow.image": image or os.environ.get("KDFLOW_IMAGE", ""),
        "kdflow.config_hash": cfg.digest(), "kdflow.profile": cfg.profile})
    return tracker, ctx


# ----------------------------------------------------------------------------- prep


def prep(cfg: Config, out_dir: str | Path, ctx: RunContext | None = None) -> dict:
    out = Path(out_dir)
    tracker, ctx = start_pipeline(cfg, ctx or RunContext())
    manifest = data.prepare(cfg.data, out, cache_dir=Path(cfg.storage.state_dir) / "sources")
    write_resolved(cfg, out)
    info = {"digest": manifest["digest"], "test_digest": manifest["test_digest"], "counts": manifest["counts"],
            "dataset": manifest["dataset"], "window": manifest["window"], "parent_run_id": ctx.parent_run_id,
            "pipeline_run_id": ctx.pipeline_run_id, "config_hash": cfg.digest()}
    if tracker is not None:
        tracker.client.set_tag(ctx.parent_run_id, "kdflow.data_digest", manifest["digest"])
        with tracker.step_run("prep_data", ctx.parent_run_id, ctx.pipeline_run_id) as run_id:
            tracker.log_config(run_id, cfg)
            for split in ("train", "val", "test"):
                tracker.log_dataset(manifest, manifest["source"], split)
            tracker.log_artifact(run_id, out / "manifest.json")
            info["run_id"] = run_id
    atomic_write_json(out / "step.json", info)
    return info


# ----------------------------------------------------------------------------- training


def _train_common(cfg: Config, role: str, data_dir: Path, out: Path, ctx: RunContext, objective_factory,
                  student_arch: str, lineage: dict | None = None, cache_factory=None) -> dict:
    from kdflow.distributed import LR_SCALING_RULE, info_from_env
    from kdflow.trainer import fit

    prepared = data.load_prepared(data_dir)
    dist_info = info_from_env()
    # fails fast on a bad tracking URI, before any training; only rank 0 talks to MLflow
    tracker, ctx = start_pipeline(cfg, ctx) if dist_info.is_main else (None, ctx)
    torch.manual_seed(cfg.train.seed)
    model = models.build_model(student_arch, prepared.num_classes, prepared.in_channels, prepared.image_size[0])
    objective = objective_factory(model, prepared)
    input_shape = tuple(prepared.train.x.shape[1:])
    report = models.model_report(model, input_shape)
    step = {"teacher": "train_teacher", "scratch": "train_student_scratch", "distill": "distill_student"}[role]
    model_role = "teacher" if role == "teacher" else "student"
    tags = {"kdflow.role": role, "kdflow.arch": student_arch, "kdflow.data_digest": prepared.digest, **(lineage or {})}
    with contextlib.ExitStack() as stack:  # the MLflow step run ends FAILED if anything below raises
        run_id = None
        if tracker is not None:
            run_id = stack.enter_context(tracker.step_run(step, ctx.parent_run_id, ctx.pipeline_run_id, tags))
            tracker.log_config(run_id, cfg)
            tracker.log_dataset(prepared.manifest, prepared.manifest["source"], "train")
            tracker.log_dataset(prepared.manifest, prepared.manifest["source"], "val")
        teacher_cache, cache_info = cache_factory(prepared) if cache_factory is not None else (None, {})
        result = fit(model, objective, prepared, cfg.train, epochs=cfg.epochs_for(model_role), lr=cfg.lr_for(model_role),
                     out_dir=out / "train_state", desc=step, teacher_cache=teacher_cache,
                     on_epoch=(lambda row: tracker.log_history(run_id, [row])) if run_id else None)
        objective.close()
        if not dist_info.is_main:
            return {"rank": dist_info.rank}
        test_acc, val_selected = _final_and_val_selected_accuracy(model, result, prepared)
        metrics = {"test_accuracy": test_acc, "val_selected_test_accuracy": val_selected,
                   "best_val_accuracy": result.best_val_acc, "best_epoch": result.best_epoch,
                   "final_val_accuracy": result.history[-1]["val_acc"] if result.history else None,
                   **report, "epochs": len(result.history), "world_size": dist_info.world,
                   "global_batch": cfg.train.batch_size, "lr_scaling_rule": LR_SCALING_RULE, **cache_info,
                   "seconds_per_epoch": (sum(h["seconds"] for h in result.history) / len(result.history)) if result.history else 0.0}
        checkpoints.save_model(model, student_arch, prepared.num_classes, prepared.in_channels, prepared.image_size[0],
                               out / "model.pt", extra={"role": role, "data_digest": prepared.digest, **(lineage or {})})
        _write_history_csv(result.history, out / "history.csv")
        atomic_write_json(out / "history.json", result.history)
        atomic_write_json(out / "metrics.json", metrics)
        write_resolved(cfg, out)
        info = {"role": role, "arch": student_arch, "data_digest": prepared.digest, "metrics": metrics,
                "parent_run_id": ctx.parent_run_id, "pipeline_run_id": ctx.pipeline_run_id,
                "config_hash": cfg.digest(), **(lineage or {})}
        info["artifact_uri"] = _upload(cfg, ctx, step, out, ["model.pt", "history.csv", "metrics.json",
                                                             "config.resolved.yaml"])
        if run_id:
            tracker.log_metrics(run_id, {k: v for k, v in metrics.items() if v is not None})
            if (out / "history.csv").is_file():
                tracker.log_artifact(run_id, out / "history.csv")
            example = prepared.test.x[:2].float().numpy() / 255.0
            model_id = tracker.log_torch_model(model, name=role, input_example=example, checkpoint=out / "model.pt",
                                               tags={**tags, "kdflow.pipeline_run_id": ctx.pipeline_run_id,
                                                     "kdflow.config_hash": cfg.digest()})
            info.update(run_id=run_id, model_id=model_id, model_uri=f"models:/{model_id}")
        atomic_write_json(out / "step.json", info)
    print(f"[{step}] {student_arch}: test accuracy {test_acc:.4f} (val-selected {val_selected}) -> {out / 'model.pt'}")
    return info


def _final_and_val_selected_accuracy(model, result, prepared) -> tuple[float, float | None]:
    """Test accuracy of the final weights (the headline) and of the val-selected ones (reported apart)."""
    from kdflow.trainer import predict_logits

    norm = data.Normalizer(prepared.mean, prepared.std)
    final = evaluate.accuracy_of(predict_logits(model, prepared.test, norm), prepared.test.y)
    if result.best_state is None:
        return final, None
    final_state = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(result.best_state)
    selected = evaluate.accuracy_of(predict_logits(model, prepared.test, norm), prepared.test.y)
    model.load_state_dict(final_state)
    return final, selected


def train(cfg: Config, role: str, data_dir: str | Path, out_dir: str | Path, ctx: RunContext | None = None) -> dict:
    """Train the teacher (role='teacher') or the scratch baseline student (role='scratch')."""
    from kdflow.objective import SupervisedObjective

    arch = cfg.teacher.arch if role == "teacher" else cfg.student.arch
    return _train_common(cfg, role, Path(data_dir), Path(out_dir), ctx or RunContext(),
                         lambda model, prepared: SupervisedObjective(), arch)


def provide_teacher(cfg: Config, data_dir: str | Path, out_dir: str | Path, ctx: RunContext | None = None) -> dict:
    """Train the teacher, or take the one ``teacher.source`` names (checkpoint path, s3:// or models:/ URI)."""
    ctx = ctx or RunContext()
    if not cfg.teacher.source:
        info = train(cfg, "teacher", data_dir, out_dir, ctx)
        tracker = ctx.tracker
        if tracker is not None:
            version = tracker.mlflow.register_model(info["model_uri"], cfg.tracking.teacher_registered_model,
                                                    tags={"kdflow.data_digest": info["data_digest"]})
            info["registered_version"] = str(version.version)
            info["registered_uri"] = f"models:/{cfg.tracking.teacher_registered_model}/{version.version}"
            atomic_write_json(Path(out_dir) / "step.json", info)
        return info
    from kdflow.trainer import predict_logits

    out = Path(out_dir)
    _, ctx = start_pipeline(cfg, ctx)  # registers models:/ resolvers; fails fast on a bad URI
    prepared = data.load_prepared(data_dir)
    model, meta = load_teacher(cfg.teacher.source, prepared.num_classes)
    checkpoints.save_model(model, meta["arch"], meta["num_classes"], meta["in_channels"], meta["image_size"],
                           out / "model.pt", extra={"role": "teacher", "source": cfg.teacher.source})
    acc = evaluate.accuracy_of(predict_logits(model, prepared.test, data.Normalizer(prepared.mean, prepared.std)),
                               prepared.test.y)
    info = {"role": "teacher", "arch": meta["arch"], "data_digest": prepared.digest, "model_uri": cfg.teacher.source,
            "metrics": {"test_accuracy": acc, **models.model_report(model, tuple(prepared.train.x.shape[1:]))},
            "parent_run_id": ctx.parent_run_id, "source": cfg.teacher.source}
    atomic_write_json(out / "metrics.json", info["metrics"])
    atomic_write_json(out / "step.json", info)
    write_resolved(cfg, out)
    print(f"[train_teacher] took teacher {cfg.teacher.source} ({meta['arch']}): test accuracy {acc:.4f}")
    return info


def load_teacher(source: str, num_classes: int, field: str = "teacher.source"):
    model, meta = checkpoints.load_model(source, field=field, expect_classes=num_classes)
    return model, meta


def distill(cfg: Config, data_dir: str | Path, teacher_path: str | Path, out_dir: str | Path,
            ctx: RunContext | None = None) -> dict:
    from kdflow.objective import DistillObjective

    prepared_probe = read_json(Path(data_dir) / "manifest.json") if (Path(data_dir) / "manifest.json").is_file() else None
    if prepared_probe is None:
        data.load_prepared(data_dir)  # raises the one-line error
    num_classes = prepared_probe["num_classes"]
    teacher, teacher_meta = load_teacher(str(teacher_path), num_classes, "teacher")
    extra = [load_teacher(t.source, num_classes, f"distill.extra_teachers[{i}].source")[0]
             for i, t in enumerate(cfg.distill.extra_teachers)]
    teacher_info = _step_info(Path(teacher_path).parent) if Path(str(teacher_path)).exists() else {}
    lineage = {"kdflow.teacher_arch": teacher_meta["arch"],
               "kdflow.teacher_model_id": teacher_info.get("model_id", ""),
               "kdflow.teacher_model_uri": teacher_info.get("model_uri", str(teacher_path)),
               "kdflow.teacher_version": str(teacher_info.get("registered_version", "")),
               "kdflow.method": cfg.distill.method}
    teachers = [teacher, *extra]

    def factory(model, prepared):
        return DistillObjective(teachers, model, cfg.distill, tuple(prepared.train.x.shape[1:]), prepared.num_classes)

    def cache_factory(prepared):
        if not cfg.distill.cache:
            return None, {}
        from kdflow import cache
        from kdflow.allocator import keep_freed_memory
        from kdflow.compiled import compile_frozen
        from kdflow.io import sha256_file
        from kdflow.trainer import pick_device

        if cfg.train.keep_freed_memory:
            keep_freed_memory()

        views = cfg.distill.cache_views or max(1, cfg.epochs_for("student"))
        cache_dir = Path(cfg.distill.cache_dir or Path(cfg.storage.state_dir) / "teacher_cache")
        teacher_file = checkpoints.resolve_source(str(teacher_path), "teacher")
        forward = teacher.to(pick_device(cfg.train.device))  # built where training runs, stored on CPU
        if cfg.distill.compile_teacher:
            forward = compile_frozen(teacher)
        tc, path, reused = cache.get_or_build(forward, sha256_file(teacher_file), prepared, views,
                                              cfg.distill.cache_seed, cache_dir)
        print(f"[distill_student] teacher cache {'reused' if reused else 'built'}: {path} "
              f"({tc.views} views, {tc.build_seconds:.1f}s to build)")
        return tc, {"cache_views": tc.views, "cache_reused": reused, "cache_build_seconds": tc.build_seconds,
                    "cache_path": str(path)}

    return _train_common(cfg, "distill", Path(data_dir), Path(out_dir), ctx or RunContext(), factory, cfg.student.arch,
                         lineage, cache_factory)


# ----------------------------------------------------------------------------- evaluation


def _load_for_eval(model_dir: Path, num_classes: int, name: str):
    path = model_dir / "model.pt"
    if not path.is_file():
        raise CheckpointError(name, f"'{path}' not found", f"pass the output directory of the {name} step")
    return checkpoints.load_model(path, field=name, expect_classes=num_classes)[0]


def evaluate_models(cfg: Config, data_dir: str | Path, teacher_dir: str | Path, scratch_dir: str | Path | None,
                    student_dir: str | Path, out_dir: str | Path, ctx: RunContext | None = None) -> dict:
    """Teacher vs scratch vs distilled student on the test split: metrics, plots, quality gate, report."""
    from kdflow.report import render_report
    from kdflow.trainer import predict_logits

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prepared = data.load_prepared(data_dir)
    tracker, ctx = start_pipeline(cfg, ctx or RunContext())
    norm = data.Normalizer(prepared.mean, prepared.std)
    input_shape = tuple(prepared.test.x.shape[1:])
    dirs = {"teacher": Path(teacher_dir), "student": Path(student_dir)}
    if scratch_dir:
        dirs["scratch"] = Path(scratch_dir)
    loaded = {name: _load_for_eval(d, prepared.num_classes, name) for name, d in dirs.items()}
    logits = {name: predict_logits(m, prepared.test, norm) for name, m in loaded.items()}
    results: dict[str, dict] = {}
    curves = {}
    for name, m in loaded.items():
        r = evaluate.classification_metrics(logits[name], prepared.test.y, prepared.num_classes, cfg.evaluate.ece_bins)
        if name != "teacher":
            r.update(evaluate.teacher_comparison(logits[name], logits["teacher"], cfg.distill.temperature))
        r.update(models.model_report(m, input_shape))
        r.update(evaluate.torch_speed(m, input_shape, cfg.evaluate))
        results[name] = r
        curves[name] = evaluate.reliability_bins(logits[name], prepared.test.y, cfg.evaluate.ece_bins)
        evaluate.plot_confusion(r["confusion_matrix"], prepared.class_names, f"{name} (test)", out / f"confusion_{name}.png")
    acc_t = results["teacher"]["accuracy"]
    for name in ("student", "scratch"):
        if name in results:
            results[name]["retention"] = evaluate.retention(results[name]["accuracy"], acc_t)
            results[name]["compression_ratio"] = results["teacher"]["parameters"] / max(1, results[name]["parameters"])
    summary = {"models": results, "class_names": prepared.class_names, "data_digest": prepared.digest,
               "test_digest": prepared.manifest["test_digest"]}
    if "scratch" in results:
        summary["transfer_rate"] = evaluate.transfer_rate(results["student"]["accuracy"], results["scratch"]["accuracy"], acc_t)
        summary["kd_gain"] = results["student"]["accuracy"] - results["scratch"]["accuracy"]
    summary["quality_gate"] = quality_gate(cfg, results["student"])
    evaluate.plot_reliability(curves, out / "reliability.png")
    labels = {"teacher": "teacher", "scratch": "scratch student", "student": "distilled student"}
    histories = {labels[n]: read_json(d / "history.json") for n, d in dirs.items() if (d / "history.json").is_file()}
    evaluate.plot_history(histories, out / "loss_curves.png")
    summary["lineage"] = {k: v for k, v in _step_info(dirs["student"]).items() if k.startswith("kdflow.") or k in (
        "model_id", "model_uri", "run_id", "config_hash", "pipeline_run_id", "data_digest")}
    atomic_write_json(out / "evaluation.json", summary)
    atomic_write_text(out / "report.md", render_report(summary))
    write_resolved(cfg, out)
    info = {"quality_gate": summary["quality_gate"], "student_accuracy": results["student"]["accuracy"],
            "parent_run_id": ctx.parent_run_id, "pipeline_run_id": ctx.pipeline_run_id}
    if tracker is not None:
        parent = info["parent_run_id"]
        with tracker.step_run("evaluate", parent, info["pipeline_run_id"]) as run_id:
            tracker.log_dataset(prepared.manifest, prepared.manifest["source"], "test")
            for name, r in results.items():
                tracker.log_metrics(run_id, {k: v for k, v in r.items() if not isinstance(v, list)}, prefix=f"{name}.")
            for k in ("transfer_rate", "kd_gain"):
                if summary.get(k) is not None:
                    tracker.log_metrics(run_id, {k: summary[k]})
            for f in ("evaluation.json", "report.md", "reliability.png", "loss_curves.png",
                      *[f"confusion_{n}.png" for n in results]):
                tracker.log_artifact(run_id, out / f, "evaluation")
            info["run_id"] = run_id
    atomic_write_json(out / "step.json", info)
    return summary


def quality_gate(cfg: Config, student: dict) -> dict:
    g = cfg.gate
    checks = {
        "accuracy": (student["accuracy"] >= g.min_accuracy, f"{student['accuracy']:.4f} >= {g.min_accuracy}"),
        "retention": (student["retention"] >= g.min_retention if student.get("retention") is not None else False,
                      f"{student.get('retention') or 0:.4f} >= {g.min_retention}"),
        "latency_p95_ms": (student["latency_p95_ms"] <= g.max_latency_p95_ms,
                           f"{student['latency_p95_ms']:.3f} <= {g.max_latency_p95_ms}"),
        "size_bytes": (student["size_bytes"] <= g.max_size_bytes, f"{student['size_bytes']} <= {g.max_size_bytes}"),
    }
    return {"passed": all(ok for ok, _ in checks.values()),
            "checks": {k: {"passed": ok, "rule": rule} for k, (ok, rule) in checks.items()}}


# ----------------------------------------------------------------------------- export, promote, finalize


def export_student(cfg: Config, data_dir: str | Path, student_dir: str | Path, eval_dir: str | Path | None,
                   out_dir: str | Path, ctx: RunContext | None = None) -> dict:
    """Export the student, verify parity and speed, and decide the final gate (quality + parity)."""
    from kdflow.export import export_all
    from kdflow.report import render_report

    out = Path(out_dir)
    prepared = data.load_prepared(data_dir)
    tracker, ctx = start_pipeline(cfg, ctx or RunContext())
    student = _load_for_eval(Path(student_dir), prepared.num_classes, "student")
    student_info = _step_info(Path(student_dir))
    torch.manual_seed(cfg.train.seed)
    result = export_all(student, prepared, cfg.export, cfg.evaluate, out,
                        source_model=student_info.get("model_uri", str(Path(student_dir) / "model.pt")), seed=cfg.train.seed)
    evaluation = read_json(Path(eval_dir) / "evaluation.json") if eval_dir else None
    checks = dict(evaluation["quality_gate"]["checks"]) if evaluation else {}
    if cfg.gate.require_export_parity:
        checks["export_parity"] = {"passed": result["parity_ok"],
                                   "rule": "; ".join(result["parity_problems"]) or "all exports within tolerance"}
    gate = {"passed": all(c["passed"] for c in checks.values()), "checks": checks}
    result["gate"] = gate
    atomic_write_json(out / "export.json", result)
    if evaluation is not None:
        atomic_write_text(out / "report.md", render_report(evaluation, result, gate))
        for png in Path(eval_dir).glob("*.png"):
            (out / png.name).write_bytes(png.read_bytes())
    write_resolved(cfg, out)
    info = {"gate_passed": gate["passed"], "parity_ok": result["parity_ok"], "student_model_uri": student_info.get("model_uri"),
            "parent_run_id": ctx.parent_run_id, "pipeline_run_id": ctx.pipeline_run_id,
            "artifact_uri": _upload(cfg, ctx, "export", out)}
    if tracker is not None:
        with tracker.step_run("export", info["parent_run_id"], info["pipeline_run_id"],
                              {"kdflow.student_model_id": student_info.get("model_id", "")}) as run_id:
            for form, r in result["forms"].items():
                tracker.log_metrics(run_id, {k: v for k, v in r.items() if k != "manifest"}, prefix=f"{form}.")
            tracker.log_metrics(run_id, {"gate_passed": float(gate["passed"]), "parity_ok": float(result["parity_ok"])})
            tracker.log_artifact(run_id, out / "export.json")
            for f in out.glob("*.manifest.json"):
                tracker.log_artifact(run_id, f, "manifests")
            if (out / "report.md").is_file():
                tracker.log_artifact(run_id, out / "report.md")
                if info["parent_run_id"]:
                    tracker.log_artifact(info["parent_run_id"], out / "report.md")
            if "onnx_int8" in result["forms"]:
                example = (prepared.test.x[:2].float().numpy() / 255.0).astype("float32")
                info["onnx_int8_model_id"] = tracker.log_onnx_model(
                    out / "student.int8.onnx", "student_int8", example,
                    {"kdflow.source_model": info["student_model_uri"] or "", "kdflow.data_digest": prepared.digest})
            info["run_id"] = run_id
    atomic_write_json(out / "step.json", info)
    print(f"[export] gate {'PASS' if gate['passed'] else 'FAIL'}; parity {'ok' if result['parity_ok'] else result['parity_problems']}")
    return result


def promote(cfg: Config, data_dir: str | Path, student_dir: str | Path, export_dir: str | Path,
            out_dir: str | Path, ctx: RunContext | None = None) -> dict:
    """Register the distilled student as challenger; move champion only when it wins."""
    from kdflow.registry import register_and_promote

    out = Path(out_dir)
    tracker, ctx = start_pipeline(cfg, ctx or RunContext())
    if tracker is None:
        decision = {"promoted": False, "reason": "tracking disabled: no registry"}
        atomic_write_json(out / "promotion.json", decision)
        return decision
    prepared = data.load_prepared(data_dir)
    student_info = _step_info(Path(student_dir))
    export_info = _step_info(Path(export_dir))
    model_uri = student_info["model_uri"]
    if cfg.export.promote_format == "onnx_int8" and export_info.get("onnx_int8_model_id"):
        model_uri = f"models:/{export_info['onnx_int8_model_id']}"
    tags = {"kdflow.data_digest": prepared.digest, "kdflow.pipeline_run_id": ctx.pipeline_run_id,
            "kdflow.config_hash": cfg.digest(),
            **{k: str(v) for k, v in student_info.items() if k.startswith("kdflow.teacher")}}
    with tracker.step_run("register_and_promote", ctx.parent_run_id, ctx.pipeline_run_id):
        decision = register_and_promote(tracker, model_uri, cfg.tracking.registered_model, prepared,
                                        student_info["run_id"], cfg.gate.min_improvement, tags)
        tracker.mlflow.set_tags({"kdflow.promoted": str(decision["promoted"]), "kdflow.reason": decision["reason"]})
    atomic_write_json(out / "promotion.json", decision)
    print(f"[promote] {decision['reason']}")
    return decision


def finalize(cfg: Config, pipeline_run_id: str, status: str) -> dict:
    """Exit handler: close the parent run (and any child left open) with the pipeline's final status."""
    tracker = _tracker(cfg)
    if tracker is None:
        return {"closed": 0}
    from kdflow.tracking import PIPELINE_TAG

    mlflow_status = {"SUCCEEDED": "FINISHED", "FINISHED": "FINISHED", "CANCELLED": "KILLED"}.get(status.upper(), "FAILED")
    runs = tracker.client.search_runs([tracker.experiment_id], filter_string=f"tags.`{PIPELINE_TAG}` = '{pipeline_run_id}'")
    closed = 0
    for r in runs:
        if r.info.status == "RUNNING":
            tracker.client.set_tag(r.info.run_id, "kdflow.pipeline_status", status)
            tracker.finish(r.info.run_id, mlflow_status)
            closed += 1
    return {"closed": closed, "status": mlflow_status}
