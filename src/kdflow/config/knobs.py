"""The KFP pipeline's parameters as config overrides (the DAG exposes a few config fields as parameters)."""

from __future__ import annotations

from typing import Any

from kdflow.errors import ConfigError

KNOB_KEYS = {
    "dataset_name": "data.dataset",
    "data_window": "data.window",
    "teacher_arch": "teacher.arch",
    "teacher_source": "teacher.source",
    "student_arch": "student.arch",
    "method": "distill.method",
    "temperature": "distill.temperature",
    "alpha": "distill.alpha",
    "teacher_epochs": "teacher.epochs",
    "student_epochs": "student.epochs",
    "min_accuracy": "gate.min_accuracy",
    "min_retention": "gate.min_retention",
    "min_improvement": "gate.min_improvement",
    "data_free": "distill.data_free",  # with method=dfad
    "adversarial_eps": "adversarial.eps",
    "min_robust_accuracy": "gate.min_robust_accuracy",
}


def knob_overrides(**knobs: Any) -> list[str]:
    """Pipeline parameters -> --set overrides. Empty strings, negative numbers and False mean 'from the config'."""
    out = []
    for name, value in knobs.items():
        if name not in KNOB_KEYS:
            raise ConfigError(name, "unknown pipeline parameter", f"use one of: {', '.join(KNOB_KEYS)}")
        if (
            value is None
            or value is False
            or value == ""
            or (isinstance(value, int | float) and not isinstance(value, bool) and value < 0)
        ):
            continue
        out.append(f"{KNOB_KEYS[name]}={value}")
    return out
