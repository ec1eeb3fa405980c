"""The release gate: quality checks on the evaluated student, export parity on top, one way to print it."""

from __future__ import annotations

from typing import NotRequired

from typing_extensions import TypedDict  # pydantic validates it inside step results (Python < 3.12)

from kdflow.config import GateConfig


class Check(TypedDict):
    passed: bool
    rule: str


class Gate(TypedDict):
    passed: bool
    checks: dict[str, Check]
    complete: NotRequired[bool]  # False: a check could not run (export without an evaluation)


def _gate(checks: dict[str, Check], complete: bool = True) -> Gate:
    return {"passed": complete and all(c["passed"] for c in checks.values()), "checks": checks, "complete": complete}


EMPTY_RELEASE = "the dataset has no release split (data.release_fraction=0, or prepared by hand or an earlier kdflow)"


def quality_gate(g: GateConfig, student: dict, kd_gain: float | None = None) -> Gate:
    """Accuracy and retention (student/teacher), (``gate.min_kd_gain``) the gain over the scratch twin and
    (``gate.min_robust_accuracy``) the student's PGD accuracy, all on the release split; latency and size.

    The gate decides what may ship, so it reads the release split, which nothing selected on (val picks
    epochs, recipes and students: a winner looks better there than it is); test figures are only reported.
    A dataset without a release split cannot pass.
    """
    acc, retention = student.get("release_accuracy"), student.get("release_retention")
    latency = student.get("latency_p95_ms_steady", student["latency_p95_ms"])  # results before rounds: p95
    checks: dict[str, Check] = {
        "release_accuracy": {
            "passed": acc is not None and acc >= g.min_accuracy,
            "rule": f"{acc:.4f} >= {g.min_accuracy}" if acc is not None else EMPTY_RELEASE,
        },
        "release_retention": {
            "passed": retention is not None and retention >= g.min_retention,
            "rule": f"{retention:.4f} >= {g.min_retention}" if retention is not None else EMPTY_RELEASE,
        },
        "latency_p95_ms": {
            "passed": latency <= g.max_latency_p95_ms,
            "rule": f"{latency:.3f} <= {g.max_latency_p95_ms} (p95 of the steadiest of the latency rounds)",
        },
        "size_bytes": {
            "passed": student["size_bytes"] <= g.max_size_bytes,
            "rule": f"{student['size_bytes']} <= {g.max_size_bytes}",
        },
    }
    if g.min_kd_gain is not None:
        checks["kd_gain"] = {
            "passed": kd_gain is not None and kd_gain >= g.min_kd_gain,
            "rule": f"{kd_gain:+.4f} >= {g.min_kd_gain:+} (release split)"
            if kd_gain is not None
            else "no scratch twin was evaluated (kdflow run --scratch, or the pipeline's scratch step)",
        }
    if g.min_robust_accuracy is not None:
        robust = student.get("release_pgd_accuracy")
        checks["release_robust_accuracy"] = {
            "passed": robust is not None and robust >= g.min_robust_accuracy,
            "rule": f"PGD {robust:.4f} >= {g.min_robust_accuracy}"
            if robust is not None
            else "robustness was not evaluated on a release split (set adversarial.evaluate=true)",
        }
    return _gate(checks)


def kd_verdict(kd_gain: float) -> str:
    """What the user should ship, in words (release-split gain of the distilled student over its scratch twin)."""
    if kd_gain > 0:
        return f"distillation paid: {100 * kd_gain:+.2f} pt over the scratch twin on the release split"
    return f"distillation did not pay for this budget ({100 * kd_gain:+.2f} pt on the release split): use the scratch model"


def release_gate(g: GateConfig, quality: Gate | None, parity_ok: bool, parity_problems: list[str]) -> Gate:
    """The final gate export decides: the quality checks plus export parity.

    Without an evaluation the quality checks never ran: the gate is incomplete, which is not a pass.
    """
    checks: dict[str, Check] = dict(quality["checks"]) if quality else {}
    if quality is None:
        checks["evaluation"] = {"passed": False, "rule": "not run: export was given no evaluation (--evaluation)"}
    if g.require_export_parity:
        checks["export_parity"] = {
            "passed": parity_ok,
            "rule": "; ".join(parity_problems) or "all exports within tolerance",
        }
    return _gate(checks, complete=quality is not None)


def gate_lines(gate: Gate, indent: str = "- ") -> list[str]:
    """One line per check, as the summary and the report print them."""
    return [f"{indent}{k}: {'ok' if c['passed'] else 'FAILED'} ({c['rule']})" for k, c in gate["checks"].items()]


def verdict(gate: Gate) -> str:
    if not gate.get("complete", True):
        return "INCOMPLETE"
    return "PASS" if gate["passed"] else "FAIL"


def failures(gate: Gate) -> str:
    """The failed checks in one line, for an error message."""
    return "; ".join(f"{k}: {c['rule']}" for k, c in gate["checks"].items() if not c["passed"]) or "none recorded"
