"""The ``tune:`` section: what ``kdflow tune`` searches, what it optimises, and under which budget.

A range is ``[low, high]`` (``low == high`` fixes the value); a list of names is a categorical choice.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from kdflow.config.base import Section

COSTS = ("params", "macs", "latency_ms")
OBJECTIVES = ("val_accuracy", *COSTS)
FAMILY = "cnn"  # the parametric CNN family: cnn-<width>x<depth> (kdflow.models.zoo)


def _ordered(name: str, pair: list[float]) -> list[float]:
    if len(pair) != 2:
        raise ValueError(f"must be [low, high] (got {pair}); fix: write two numbers, e.g. tune.space.{name}=[1, 8]")
    if pair[0] > pair[1]:
        raise ValueError(
            f"low {pair[0]} is above high {pair[1]}; fix: write [low, high] with low <= high (equal fixes the value)"
        )
    return pair


class SearchSpace(Section):
    students: list[str] = Field(
        default_factory=lambda: [FAMILY],
        description=f"'{FAMILY}' = the parametric family cnn-<width>x<depth>; any other name is a fixed model",
    )
    cnn_width: list[int] = Field(default_factory=lambda: [8, 48], description="channels of the first stage")
    cnn_depth: list[int] = Field(default_factory=lambda: [2, 4], description="conv layers (2 = cnn-small's shape)")
    methods: list[str] = Field(
        default_factory=lambda: ["kd"], description="kd, dkd, or kd+<feature loss> (e.g. kd+at; live teacher)"
    )
    temperature: list[float] = Field(default_factory=lambda: [1.0, 8.0])
    alpha: list[float] = Field(default_factory=lambda: [0.0, 0.9], description="the hard-loss weight")
    lr: list[float] = Field(default_factory=lambda: [0.02, 0.2], description="sampled on a log scale")
    weight_decay: list[float] = Field(default_factory=lambda: [5e-4, 5e-4], description="sampled on a log scale")
    epochs: list[int] = Field(default_factory=lambda: [15, 15])
    mix: list[Literal["none", "mixup", "cutmix"]] = Field(
        default_factory=lambda: ["none"],  # type: ignore[arg-type]
        description="function matching: teacher and student see one mixed image",
    )
    augment: list[bool] | None = Field(
        None,
        description="the train view (random crop and flip) as a shared knob, e.g. [true, false]: an MLP learns "
        "more without; None: the prepared data's view, not searched",
    )
    teacher_checkpoints: list[str] = Field(
        default_factory=lambda: ["final"],
        description="final, best_val, epoch:N (N in teacher.snapshot_epochs): which teacher to distil from",
    )

    @field_validator("teacher_checkpoints")
    @classmethod
    def _known_checkpoints(cls, v: list[str]) -> list[str]:
        for c in v:
            if not re.fullmatch(r"final|best_val|epoch:[1-9][0-9]*", c):
                raise ValueError(f"unknown teacher checkpoint '{c}'; fix: use final, best_val or epoch:N")
        return v

    @field_validator("students", "methods", "mix", "teacher_checkpoints")
    @classmethod
    def _non_empty(cls, v: list) -> list:
        if not v:
            raise ValueError("is empty; fix: list at least one choice")
        if len(set(v)) != len(v):
            raise ValueError(f"lists a choice twice ({v}); fix: list each choice once")
        return v

    @field_validator("cnn_width", "cnn_depth", "epochs")
    @classmethod
    def _int_range(cls, v: list[int], info) -> list[int]:
        _ordered(info.field_name, v)  # type: ignore[arg-type]
        if v[0] < 1:
            raise ValueError(f"must be >= 1 (got {v}); fix: use positive values")
        return v

    @field_validator("temperature", "alpha", "lr", "weight_decay")
    @classmethod
    def _float_range(cls, v: list[float], info) -> list[float]:
        _ordered(info.field_name, v)
        if info.field_name == "alpha" and not (0 <= v[0] and v[1] <= 1):
            raise ValueError(f"must lie in [0, 1] (got {v}); fix: alpha weights the hard loss")
        if info.field_name != "alpha" and v[0] <= 0:
            raise ValueError(f"must be > 0 (got {v}); fix: use positive values (sampled on a log scale)")
        return v

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, v: list[str]) -> list[str]:
        from kdflow.training import loss_registry

        for m in v:
            soft, _, feature = m.partition("+")
            if soft not in loss_registry.SOFT_LOSSES or (feature and feature not in loss_registry.FEATURE_LOSSES):
                raise ValueError(
                    f"unknown method '{m}'; fix: use {', '.join(loss_registry.SOFT_LOSSES)} or "
                    f"kd+<one of {', '.join(loss_registry.FEATURE_LOSSES)}>"
                )
        return v

    @model_validator(mode="after")
    def _dkd_needs_unmixed(self) -> SearchSpace:
        if self.mix == ["mixup"] or self.mix == ["cutmix"] or self.mix == ["mixup", "cutmix"]:
            if all(m.startswith("dkd") for m in self.methods):
                raise ValueError(
                    "every method is dkd and every mix choice mixes images, which dkd refuses; "
                    "fix: add 'none' to tune.space.mix or kd to tune.space.methods"
                )
        return self


class FinalRung(Section):
    """Multi-fidelity: the search ranks on short runs (a subset, few epochs); the final rung trains its best
    again at full fidelity and picks among them on validation (kdflow.tune.final)."""

    top_k: int = Field(
        0, ge=0, description="train the k best distillation trials and the twin's k best again; 0 = no final rung"
    )
    epochs: int | None = Field(None, ge=1, description="the final rung's epochs; None = the student's (train.epochs)")
    all_data: bool = Field(True, description="the final rung trains on the whole train split (no data.train_subset)")


class TuneConfig(Section):
    trials: int = Field(20, ge=1, description="trials of the distillation study (the scratch twin gets as many)")
    timeout_s: float | None = Field(None, gt=0, description="stop starting trials after this many seconds")
    objectives: list[str] = Field(
        default_factory=lambda: ["val_accuracy", "params"],
        description="val_accuracy first; an optional second, minimised: params, macs or latency_ms",
    )
    max_params: int | None = Field(None, ge=1, description="hard budget: students above it are never trained")
    max_macs: int | None = Field(None, ge=1)
    max_latency_ms: float | None = Field(None, gt=0, description="ONNX batch-1 latency on this machine (p50)")
    pruner: Literal["median", "hyperband", "none"] = Field(
        "median", description="stop trials whose per-epoch val accuracy is hopeless (single-objective studies)"
    )
    startup_trials: int = Field(5, ge=0, description="trials before the pruner and the TPE model start")
    scratch_trials: int | None = Field(
        None, ge=0, description="trials of the scratch twin's study; None = as many as the distillation study"
    )
    cache_views: int = Field(0, ge=0, description="teacher-cache views shared by the trials; 0 = the most epochs")
    verdict_alpha: float = Field(
        0.05,
        gt=0,
        lt=1,
        description="distillation pays only when the pick beats its twin on validation beyond noise: one-sided "
        "exact McNemar p on the images they disagree on below this",
    )
    seed: int = 0
    space: SearchSpace = Field(default_factory=SearchSpace)
    final: FinalRung = Field(default_factory=FinalRung)

    @field_validator("objectives")
    @classmethod
    def _known_objectives(cls, v: list[str]) -> list[str]:
        if not v or v[0] != "val_accuracy" or len(v) > 2:
            raise ValueError(
                f"must be [val_accuracy] or [val_accuracy, COST] (got {v}); fix: e.g. tune.objectives=[val_accuracy, params]"
            )
        for name in v:
            if name not in OBJECTIVES:
                raise ValueError(f"unknown objective '{name}'; fix: use one of {', '.join(OBJECTIVES)}")
        return v

    @property
    def cost(self) -> str:
        """The cost on the Pareto front's x axis: the second objective, else the first budget set."""
        if len(self.objectives) == 2:
            return self.objectives[1]
        if self.max_latency_ms is not None:
            return "latency_ms"
        return "macs" if self.max_macs is not None else "params"
