"""The evaluate step: teacher vs scratch vs distilled student on the test split (reported), val (the selection
split, reported) and the release split (what the quality gate reads), plots, the quality gate."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from kdflow.config import Config, write_resolved
from kdflow.data import prepared as data
from kdflow.errors import CheckpointError
from kdflow.evaluation import metrics as evaluate
from kdflow.evaluation.gate import kd_verdict, quality_gate
from kdflow.infra import checkpoints, step_manifest
from kdflow.infra.io import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json, sha256_file
from kdflow.models import zoo as models
from kdflow.steps import record, results
from kdflow.steps.chain import student_sha256
from kdflow.steps.context import PathArg, RunContext, start_pipeline
from kdflow.steps.results import EvaluationResult, TrainResult
from kdflow.steps.taught_by import check_teacher, evaluation_teacher
from kdflow.steps.teacher_checkpoints import chosen_teacher
from kdflow.steps.timing import timed

LABELS = {
    "teacher": "teacher",
    "scratch": "scratch student",
    "student": "distilled student",
    "selftrain": "self-training twin",
    "labels_only": "distilled, labels only",
}
STUDENT_ROWS = ("student", "scratch", "selftrain", "labels_only")  # compared with the teacher
LINEAGE_KEYS = ("model_id", "model_uri", "run_id", "config_hash", "pipeline_run_id", "data_digest")


def load_step_model(model_dir: Path, num_classes: int, name: str, file: str = "model.pt") -> nn.Module:
    """The model a step directory holds, its manifest verified first: a step that never finished or whose files
    changed since is refused; the student's and the baselines' directories must have one (a teacher may be a
    directory made by hand)."""
    path = model_dir / file
    if not path.is_file():
        raise CheckpointError(name, f"'{path}' not found", f"pass the output directory of the {name} step")
    required = name in ("student", "selftrain", "labels_only")  # always a step's output, never a file by hand
    step_manifest.verify(model_dir, step_manifest.MODEL_STEPS, f"--{name}", required=required)
    return checkpoints.load_model(path, field=name, expect_classes=num_classes)[0]


def learned_from(student_dir: Path) -> str:
    """The teacher checkpoint the student learned from (final, best_val or epoch:N), from its lineage."""
    info: dict = dict(results.read(student_dir, TrainResult) or {})
    return str(info.get("lineage", {}).get("kdflow.teacher_checkpoint") or "final")


def teacher_file(teacher_dir: Path, student_dir: Path) -> str:
    """The teacher's file to compare the student with: the one it learned from, when the teacher's directory
    holds it (a teacher made by hand may hold model.pt only)."""
    which = learned_from(student_dir)
    if which == "final":
        return "model.pt"
    return Path(chosen_teacher(str(teacher_dir / "model.pt"), which)).name


def _teacher_logits(
    cfg: Config, teacher: nn.Module, prepared: data.PreparedData
) -> tuple[torch.Tensor, torch.Tensor | None, list[dict]]:
    """The teacher's test logits; for an ensemble also its distribution at T (the targets the student learnt,
    ``distill.ensemble`` over the members at T) and each member's test and val accuracy (reported)."""
    from kdflow.training.losses import ensemble_soft_targets
    from kdflow.training.teacher_ensemble import TeacherEnsemble

    norm = prepared.normalizer()
    if not isinstance(teacher, TeacherEnsemble):
        return evaluate.predict_logits(teacher, prepared.test, norm), None, []
    test = [evaluate.predict_logits(m, prepared.test, norm) for m in teacher.members]
    members = [
        {
            "accuracy": evaluate.accuracy(t, prepared.test.y),
            "val_accuracy": evaluate.accuracy(evaluate.predict_logits(m, prepared.val, norm), prepared.val.y),
            "parameters": models.num_parameters(m),
        }
        for m, t in zip(teacher.members, test, strict=True)
    ]
    targets = ensemble_soft_targets(test, cfg.distill.temperature, teacher.rule)
    return teacher.combine(test), targets, members


def _model_metrics(
    name: str,
    model: nn.Module,
    logits,
    prepared: data.PreparedData,
    cfg: Config,
    out: Path,
    example: torch.Tensor,
    teacher_targets: torch.Tensor | None = None,
) -> dict:
    """Test metrics, size and speed (timed on ``example``, real test rows: token ids have no random stand-in)."""
    r = evaluate.classification_metrics(logits[name], prepared.test.y, prepared.num_classes, cfg.evaluate.ece_bins)
    if name != "teacher":
        r.update(evaluate.teacher_comparison(logits[name], logits["teacher"], cfg.distill.temperature, teacher_targets))
    input_shape = tuple(prepared.test.x.shape[1:])
    r.update(models.model_report(model, input_shape))
    r.update(evaluate.torch_speed(model, input_shape, cfg.evaluate, example))
    evaluate.plot_confusion(
        r["confusion_matrix"], prepared.class_names, f"{name} (test)", out / f"confusion_{name}.png"
    )
    return r


def method_labels(cfg: Config) -> dict:
    """What each row of the table is: the distillation method and how the baselines were trained."""
    return {
        "method": cfg.distill.method,
        "data_free": cfg.distill.data_free,
        "scratch_adversarial": cfg.adversarial_scratch_twin,
        "teacher_adversarial": cfg.teacher.adversarial,
    }


def _robustness(
    cfg: Config, prepared: data.PreparedData, loaded: dict[str, nn.Module], scores: dict, summary: dict, out: Path
) -> None:
    """FGSM/PGD accuracy and the PGD curve per model (test subset, reported); the student's PGD on val (gate)."""
    from kdflow.evaluation.robustness import plot_robustness, release_pgd_accuracy, robustness_report
    from kdflow.models.onnx_teacher import is_black_box

    a = cfg.adversarial
    attackable = {n: m for n, m in loaded.items() if not is_black_box(m)}  # white-box attacks need gradients
    for name, model in attackable.items():
        scores[name].update(robustness_report(model, prepared, a))
    scores["student"]["release_pgd_accuracy"] = release_pgd_accuracy(loaded["student"], prepared, a)
    if "scratch" in attackable:
        summary["robust_gain"] = scores["student"]["pgd_accuracy"] - scores["scratch"]["pgd_accuracy"]
    from kdflow.evaluation.report import row_labels

    labels = row_labels(summary)  # the table's names: "student (ARD)", "student (scratch, PGD-AT)", ...
    plot_robustness({labels[n]: scores[n]["robustness_curve"] for n in attackable}, a.steps, out / "robustness.png")


def _versus_selftrain(scores: dict, release_logits: dict, release) -> dict:
    """The distilled student against the self-training twin: the teacher's share of the gain, not the pool's
    (test reported; on the release split with the paired McNemar test promotion uses)."""
    out = {"kd_gain_vs_selftrain": scores["student"]["accuracy"] - scores["selftrain"]["accuracy"]}
    if release is not None:
        from kdflow.evaluation.significance import mcnemar

        correct = {n: release_logits[n].argmax(1) == release.y for n in ("student", "selftrain")}
        out["kd_gain_release_vs_selftrain"] = (
            scores["student"]["release_accuracy"] - scores["selftrain"]["release_accuracy"]
        )
        out["vs_selftrain_release_mcnemar"] = mcnemar(correct["student"], correct["selftrain"])
    return out


def _lineage(student_dir: Path) -> dict[str, str]:
    info = results.read(student_dir, TrainResult)
    if info is None:
        return {}
    return {**info.get("lineage", {}), **{k: info[k] for k in LINEAGE_KEYS if k in info}}  # type: ignore[literal-required]


def compare(
    cfg: Config, prepared: data.PreparedData, dirs: dict[str, Path], loaded: dict[str, nn.Module], out: Path
) -> dict:
    """The evaluation summary (``evaluation.json``): per-model metrics, KD gain, transfer rate, gate, plots."""
    norm = prepared.normalizer()
    logits = {name: evaluate.predict_logits(m, prepared.test, norm) for name, m in loaded.items() if name != "teacher"}
    logits["teacher"], targets, members = _teacher_logits(cfg, loaded["teacher"], prepared)
    example = norm(prepared.test.x[:64])
    scores = {name: _model_metrics(name, m, logits, prepared, cfg, out, example, targets) for name, m in loaded.items()}
    release = prepared.release if prepared.release is not None and len(prepared.release) else None
    release_logits = {n: evaluate.predict_logits(m, release, norm) for n, m in loaded.items()} if release else {}
    for name, m in loaded.items():  # val: what selection read; release: what the gate reads; both beside test
        scores[name]["val_accuracy"] = evaluate.accuracy(evaluate.predict_logits(m, prepared.val, norm), prepared.val.y)
        scores[name]["release_accuracy"] = (
            evaluate.accuracy(release_logits[name], release.y) if release is not None else None
        )
    acc_t = scores["teacher"]["accuracy"]
    for name in STUDENT_ROWS:
        if name in scores:
            scores[name]["retention"] = evaluate.retention(scores[name]["accuracy"], acc_t)
            scores[name]["val_retention"] = evaluate.retention(
                scores[name]["val_accuracy"], scores["teacher"]["val_accuracy"]
            )
            scores[name]["release_retention"] = (
                evaluate.retention(scores[name]["release_accuracy"], scores["teacher"]["release_accuracy"])
                if release is not None
                else None
            )
            scores[name]["compression_ratio"] = scores["teacher"]["parameters"] / max(1, scores[name]["parameters"])
    summary = {
        "models": scores,
        "class_names": prepared.class_names,
        "student_sha256": student_sha256(dirs["student"]),  # what export and promote check they were given
        "data_digest": prepared.digest,
        "test_digest": prepared.manifest["test_digest"],
        "release_digest": prepared.manifest.get("release_digest"),
        "release_samples": len(release) if release is not None else 0,
    }
    if "scratch" in scores:
        summary["transfer_rate"] = evaluate.transfer_rate(
            scores["student"]["accuracy"], scores["scratch"]["accuracy"], acc_t
        )
        summary["kd_gain"] = scores["student"]["accuracy"] - scores["scratch"]["accuracy"]
        summary["kd_gain_val"] = scores["student"]["val_accuracy"] - scores["scratch"]["val_accuracy"]
        if release is not None:
            summary["kd_gain_release"] = scores["student"]["release_accuracy"] - scores["scratch"]["release_accuracy"]
            summary["kd_verdict"] = kd_verdict(summary["kd_gain_release"])
    if "selftrain" in scores:
        summary.update(_versus_selftrain(scores, release_logits, release))
    summary.update(method_labels(cfg))
    if cfg.adversarial.evaluate and prepared.inputs is None:  # pixel-space attacks: images only
        _robustness(cfg, prepared, loaded, scores, summary, out)
    if (dirs["student"] / "generator_samples.png").is_file():  # data-free: what the generator made
        atomic_write_bytes(out / "generator_samples.png", (dirs["student"] / "generator_samples.png").read_bytes())
    summary["quality_gate"] = quality_gate(cfg.gate, scores["student"], summary.get("kd_gain_release"))
    evaluate.plot_reliability(
        {name: evaluate.reliability_bins(logits[name], prepared.test.y, cfg.evaluate.ece_bins) for name in loaded},
        out / "reliability.png",
    )
    histories = {LABELS[n]: read_json(d / "history.json") for n, d in dirs.items() if (d / "history.json").is_file()}
    evaluate.plot_history(histories, out / "loss_curves.png")
    summary["lineage"] = _lineage(dirs["student"])
    if members:
        summary["teacher_members"] = members
    return summary


@timed("evaluate")
def evaluate_models(
    cfg: Config,
    data_dir: PathArg,
    teacher_dir: PathArg,
    scratch_dir: PathArg | None,
    student_dir: PathArg,
    out_dir: PathArg,
    ctx: RunContext | None = None,
    baselines_dir: PathArg | None = None,
) -> dict:
    """Evaluate and write ``evaluation.json``, ``report.md`` and the plots; returns the evaluation summary.
    ``baselines_dir``: the transfer set's baselines (:mod:`kdflow.steps.baselines`), rows of their own."""
    from kdflow.evaluation.report import render_report
    from kdflow.steps.baselines import trained_baselines

    out = Path(out_dir)
    prepared = data.load_prepared(data_dir)
    ctx = start_pipeline(cfg, ctx or RunContext())
    dirs = {"teacher": Path(teacher_dir), "student": Path(student_dir)}
    if scratch_dir:
        dirs["scratch"] = Path(scratch_dir)
    dirs.update(trained_baselines(baselines_dir))
    files = {"teacher": teacher_file(dirs["teacher"], dirs["student"])}
    loaded = {  # before any write
        name: load_step_model(d, prepared.num_classes, name, files.get(name, "model.pt")) for name, d in dirs.items()
    }
    teacher_sha256 = check_teacher(dirs["teacher"] / files["teacher"], dirs["student"])
    loaded["teacher"], extra_digests = evaluation_teacher(
        cfg, loaded["teacher"], dirs["student"], prepared.num_classes, prepared.input_shape
    )
    step_manifest.claim(out, "evaluate")
    summary = compare(cfg, prepared, dirs, loaded, out)
    summary["teacher_checkpoint"] = files["teacher"]  # retention and agreement are against this teacher
    if extra_digests:  # ... and its ensemble with these
        summary["extra_teachers"] = [
            {"source": t.source, "sha256": d} for t, d in zip(cfg.distill.extra_teachers, extra_digests, strict=True)
        ]
    atomic_write_json(out / "evaluation.json", summary)
    atomic_write_text(out / "report.md", render_report(summary))
    write_resolved(cfg, out)
    result: EvaluationResult = {
        "quality_gate": summary["quality_gate"],
        "student_accuracy": summary["models"]["student"]["accuracy"],
        "parent_run_id": ctx.parent_run_id,
        "pipeline_run_id": ctx.pipeline_run_id,
    }
    result = results.merged(result, record.evaluation(ctx.tracker, ctx, prepared, summary, out))
    inputs = {"data_digest": prepared.digest, "student_sha256": summary["student_sha256"]}
    inputs.update(
        {f"{n}_sha256": sha256_file(d / "model.pt") for n, d in dirs.items() if n not in ("student", "teacher")}
    )
    inputs["teacher_sha256"] = teacher_sha256
    if extra_digests:
        inputs["extra_teachers_sha256"] = ",".join(extra_digests)
    results.write(out, result, inputs)
    return summary
