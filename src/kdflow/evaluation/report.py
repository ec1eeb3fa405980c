"""Markdown report: the comparison table, the gate, lineage and the plots."""

from __future__ import annotations

from kdflow.evaluation.gate import Gate, gate_lines, verdict


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _num(v, fmt: str = "{:,}") -> str:
    return "-" if v is None else fmt.format(v)


METHOD_LABELS = {
    "ard": "student (ARD)",
    "rslad": "student (RSLAD)",
    "dfad": "student (data-free DFAD)",
    "dkd": "student (DKD)",
}


def row_labels(evaluation: dict) -> dict[str, str]:
    """Row names that say how each model was trained (the method, adversarial baselines)."""
    teacher = "teacher (PGD-AT)" if evaluation.get("teacher_adversarial") else "teacher"
    if evaluation.get("teacher_members"):
        teacher = f"{teacher} ensemble of {len(evaluation['teacher_members'])}"
    return {
        "teacher": teacher,
        "scratch": "student (scratch, PGD-AT)" if evaluation.get("scratch_adversarial") else "student (scratch)",
        "student": METHOD_LABELS.get(evaluation.get("method", "kd"), "student (distilled)"),
        "selftrain": "student (self-training twin)",
        "labels_only": "student (distilled, labels only)",
    }


def summary_rows(evaluation: dict, export: dict | None = None) -> list[dict]:
    """One row per model form: what `make run` prints and the report shows."""
    m = evaluation["models"]
    rows = []
    labels = row_labels(evaluation)
    for key in ("teacher", "scratch", "selftrain", "labels_only", "student"):
        if key not in m:
            continue
        r = m[key]
        rows.append(
            {
                "model": labels[key],
                "accuracy": r["accuracy"],
                "f1_macro": r["f1_macro"],
                "agreement": r.get("agreement_with_teacher"),
                "transfer_rate": evaluation.get("transfer_rate") if key == "student" else None,
                "parameters": r["parameters"],
                "size_bytes": r["size_bytes"],
                "latency_p50_ms": r["latency_p50_ms"],
                "throughput_ips": r["throughput_ips"],
                "fgsm_accuracy": r.get("fgsm_accuracy"),
                "pgd_accuracy": r.get("pgd_accuracy"),
            }
        )
    if export:
        for form, label in (("onnx", "student ONNX fp32"), ("onnx_int8", "student ONNX int8")):
            if form in export.get("forms", {}):
                f = export["forms"][form]
                rows.append(
                    {
                        "model": label,
                        "accuracy": f["accuracy"],
                        "f1_macro": None,
                        "agreement": None,
                        "transfer_rate": None,
                        "parameters": m["student"]["parameters"],
                        "size_bytes": f["size_bytes"],
                        "latency_p50_ms": f["latency_p50_ms"],
                        "throughput_ips": f["throughput_ips"],
                        "fgsm_accuracy": None,
                        "pgd_accuracy": f.get("pgd_accuracy"),
                    }
                )
    return rows


def render_table(rows: list[dict], robust: dict | None = None) -> str:
    """The comparison table; with ``robust`` ({eps, steps}) two more columns: FGSM and PGD accuracy."""
    head = "| model | accuracy | F1 (macro) | agreement w/ teacher | transfer rate | params | size (bytes) | latency p50 b=1 (ms) | throughput b=256 (img/s) |"
    cols = 9
    if robust:
        head += f" FGSM eps={robust['eps']:g} | PGD-{robust['steps']} eps={robust['eps']:g} |"
        cols += 2
    lines = [head, "|" + "---|" * cols]
    for r in rows:
        line = (
            f"| {r['model']} | {_pct(r['accuracy'])} | {_pct(r['f1_macro'])} | {_pct(r['agreement'])} | "
            f"{_num(r['transfer_rate'], '{:.3f}')} | {_num(r['parameters'])} | {_num(r['size_bytes'])} | "
            f"{_num(r['latency_p50_ms'], '{:.3f}')} | {_num(r['throughput_ips'], '{:,.0f}')} |"
        )
        if robust:
            line += f" {_pct(r.get('fgsm_accuracy'))} | {_pct(r.get('pgd_accuracy'))} |"
        lines.append(line)
    return "\n".join(lines)


def _transfer_set_line(evaluation: dict) -> str:
    """What the gain is made of: the teacher (vs the self-training twin, which had the same pool) and the pool
    (vs the labels-only distilled student, which had the same teacher)."""
    m = evaluation["models"]
    line = (
        f"Transfer set: the distilled student {100 * evaluation['kd_gain_vs_selftrain']:+.2f} pt over the self-training "
        "twin (the scratch twin labelling the same unlabeled pool: the teacher's share of the gain)"
    )
    if "labels_only" in m:
        gain = m["student"]["accuracy"] - m["labels_only"]["accuracy"]
        line += f", {100 * gain:+.2f} pt over the labels-only distilled student (the pool's share)"
    test = evaluation.get("vs_selftrain_release_mcnemar")
    if test is not None:
        line += (
            f"; on the release split {100 * evaluation['kd_gain_release_vs_selftrain']:+.2f} pt, McNemar p="
            f"{test['p_value']:.3g} ({test['challenger_only_correct']} vs {test['champion_only_correct']} discordant)"
        )
    return line + " (test unless named)."


def _ensemble_line(evaluation: dict) -> str:
    """What the teacher row is when the student learnt from several teachers."""
    members = evaluation["teacher_members"]
    accs = ", ".join(_pct(m["accuracy"]) for m in members)
    return (
        f"Teacher: the ensemble the student learnt from (--teacher and distill.extra_teachers, {len(members)} "
        f"members combined as distill.ensemble); the members' test accuracy {accs}. Its parameters, size and "
        "latency are the members' together; retention, agreement, the transfer rate and the gate read the ensemble."
    )


def robust_settings(evaluation: dict) -> dict | None:
    s = evaluation["models"]["student"]
    if s.get("pgd_accuracy") is None:
        return None
    return {"eps": s["robust_eps"], "steps": s["robust_steps"], "samples": s["robust_samples"]}


def render_report(evaluation: dict, export: dict | None = None, gate: Gate | None = None) -> str:
    parts = [
        "# kdflow distillation report",
        "",
        f"Data digest: `{evaluation['data_digest'][:16]}`",
        "",
        "## Models on the test split",
        "",
        render_table(summary_rows(evaluation, export), robust_settings(evaluation)),
        "",
    ]
    if evaluation.get("teacher_members"):
        parts += [_ensemble_line(evaluation), ""]
    robust = robust_settings(evaluation)
    if robust:
        parts += [
            f"Robust accuracy: L-inf attacks in [0, 1] pixels, eps {robust['eps']:g}, on the first "
            f"{robust['samples']} test images (random start, seeded). ONNX rows: the PyTorch twin's PGD examples "
            "(a transfer attack: onnxruntime gives no gradients); TorchScript is attacked directly."
            + (
                f" Robust gain over the scratch twin: {100 * evaluation['robust_gain']:+.2f} pt (PGD)."
                if evaluation.get("robust_gain") is not None
                else ""
            ),
            "",
        ]
    if evaluation.get("kd_gain") is not None:
        parts += [
            f"KD gain over scratch: {100 * evaluation['kd_gain']:+.2f} pt; "
            f"transfer rate: {_num(evaluation.get('transfer_rate'), '{:.3f}')}",
            "",
        ]
    if evaluation.get("kd_verdict"):
        parts += [f"**{evaluation['kd_verdict']}**", ""]
    if evaluation.get("kd_gain_vs_selftrain") is not None:
        parts += [_transfer_set_line(evaluation), ""]
    if evaluation.get("release_samples") is not None:
        parts += [
            f"The gate reads the release split ({evaluation['release_samples']:,} images held out by content hash "
            "from every data window; nothing trained or selected on them); val picked epochs and recipes; test "
            "is reported.",
            "",
        ]
    s = evaluation["models"]["student"]
    parts += [
        f"Student: KL(teacher || student) = {s['kl_teacher_student']:.4f}, NLL = {s['nll']:.4f}, "
        f"ECE = {s['ece']:.4f}, retention = {_pct(s.get('retention'))}, "
        f"compression {s.get('compression_ratio', 0):.1f}x",
        "",
    ]
    g: Gate = gate or evaluation["quality_gate"]
    parts += ["## Gate", "", f"**{verdict(g)}**", "", *gate_lines(g)]
    if export:
        parts += ["", "## Export parity", ""]
        for form, f in export.get("forms", {}).items():
            parts.append(
                f"- {form}: max |logit diff| {f['max_abs_diff']:.2e}, top-1 agreement {_pct(f['top1_agreement'])}, "
                f"accuracy {_pct(f['accuracy'])}, p95 {f['latency_p95_ms']:.3f} ms, {f['size_bytes']:,} bytes"
            )
    if evaluation.get("lineage"):
        parts += ["", "## Lineage", ""] + [f"- {k}: `{v}`" for k, v in sorted(evaluation["lineage"].items()) if v]
    parts += [
        "",
        "## Plots",
        "",
        "![loss curves](loss_curves.png)",
        "",
        "![reliability](reliability.png)",
        "",
        "![confusion: distilled student](confusion_student.png)",
        "",
    ]
    if robust:
        parts += ["![robustness curve](robustness.png)", ""]
    if evaluation.get("data_free"):
        parts += ["![generated images](generator_samples.png)", ""]
    return "\n".join(parts)
