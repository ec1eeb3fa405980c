"""The search space: which students fit the budget, and one trial's sample of student and recipe."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from kdflow.config import Config, TuneConfig
from kdflow.config.tune import FAMILY
from kdflow.errors import ConfigError
from kdflow.models import zoo as models


@dataclass
class Feasible:
    """Students that meet the static budget (params, MACs): fixed names and, per depth, the widest width."""

    fixed: list[str] = field(default_factory=list)
    max_width: dict[int, int] = field(default_factory=dict)

    @property
    def students(self) -> list[str]:
        return [*self.fixed, *([FAMILY] if self.max_width else [])]


Builder = Callable[[str], torch.nn.Module]  # a student architecture's name -> a fresh model for the data


def student_builder(
    cfg: Config, input_shape: tuple[int, ...], num_classes: int, layout: dict[str, dict] | None
) -> Builder:
    """Students for the data: image models on its images, or models on the named inputs ``student.inputs``."""
    from kdflow.models.inputs import build_for_data

    def build(arch: str) -> torch.nn.Module:
        return build_for_data(
            arch, num_classes, input_shape, layout, cfg.student.inputs, "student.inputs", cfg.data.dataset
        )

    return build


def builder_for(cfg: Config, prepared) -> Builder:
    return student_builder(cfg, prepared.input_shape, prepared.num_classes, prepared.inputs)


def static_cost(build: Builder, arch: str, input_shape: tuple[int, ...]) -> dict[str, int]:
    model = build(arch)
    return {"params": models.num_parameters(model), "macs": models.count_macs(model, input_shape)}


def _fits(tune: TuneConfig, cost: dict[str, int]) -> bool:
    return (tune.max_params is None or cost["params"] <= tune.max_params) and (
        tune.max_macs is None or cost["macs"] <= tune.max_macs
    )


def feasible_students(tune: TuneConfig, input_shape: tuple[int, ...], build: Builder) -> Feasible:
    """What the budget allows; a budget nothing in the space meets is a one-line error."""
    space, out = tune.space, Feasible()
    for name in space.students:
        if name != FAMILY:
            if _fits(tune, static_cost(build, name, input_shape)):
                out.fixed.append(name)
            continue
        lo, hi = space.cnn_width
        for depth in range(space.cnn_depth[0], space.cnn_depth[1] + 1):
            if depth < 2:
                continue
            fits = [
                w for w in (lo, hi) if _fits(tune, static_cost(build, models.param_cnn_name(w, depth), input_shape))
            ]
            if not fits:
                continue
            if hi in fits:
                out.max_width[depth] = hi
                continue
            good, bad = lo, hi  # cost grows with width: bisect the widest width that fits
            while bad - good > 1:
                mid = (good + bad) // 2
                cost = static_cost(build, models.param_cnn_name(mid, depth), input_shape)
                good, bad = (mid, bad) if _fits(tune, cost) else (good, mid)
            out.max_width[depth] = good
    if not out.students:
        budget = ", ".join(
            f"{k}={v}" for k, v in (("max_params", tune.max_params), ("max_macs", tune.max_macs)) if v is not None
        )
        raise ConfigError(
            "tune.space.students",
            f"no student in the search space meets the budget ({budget})",
            "raise the budget or add smaller students (e.g. lower tune.space.cnn_width)",
        )
    return out


def check_latency_budget(tune: TuneConfig, feasible: Feasible, input_shape: tuple[int, ...], build: Builder) -> None:
    """With ``tune.max_latency_ms``: the fastest candidate (each fixed student, the family's narrowest width at each
    depth) is measured here, before data, teacher or registry are written; a budget none meets is one line."""
    if tune.max_latency_ms is None:
        return
    from kdflow.tune.cost import onnx_latency_ms

    names = [*feasible.fixed, *(models.param_cnn_name(tune.space.cnn_width[0], d) for d in feasible.max_width)]
    measured = {n: onnx_latency_ms(build(n), input_shape, 20) for n in names}
    fastest = min(measured, key=lambda n: measured[n])
    if measured[fastest] > tune.max_latency_ms:
        raise ConfigError(
            "tune.max_latency_ms",
            f"no student in the search space meets {tune.max_latency_ms} ms: the fastest, {fastest}, takes "
            f"{measured[fastest]:.3f} ms (ONNX, batch 1, on this machine)",
            "raise tune.max_latency_ms, or add smaller students to tune.space.students",
        )


def _suggest_float(trial, name: str, bounds: list[float], log: bool) -> float:
    return float(trial.suggest_float(name, bounds[0], bounds[1], log=log and bounds[0] > 0))


def sample_recipe(trial, tune: TuneConfig, distill: bool) -> dict[str, Any]:
    """What the distilled student and its scratch twin share (lr, weight decay, epochs, mixing), then KD's own."""
    space = tune.space
    params: dict[str, Any] = {
        "lr": _suggest_float(trial, "lr", space.lr, log=True),
        "weight_decay": _suggest_float(trial, "weight_decay", space.weight_decay, log=True),
        "epochs": int(trial.suggest_int("epochs", space.epochs[0], space.epochs[1])),
    }
    if distill:
        params["method"] = trial.suggest_categorical("method", space.methods)
        params["temperature"] = _suggest_float(trial, "temperature", space.temperature, log=True)
        params["alpha"] = _suggest_float(trial, "alpha", space.alpha, log=False)
        params["teacher_checkpoint"] = trial.suggest_categorical("teacher_checkpoint", space.teacher_checkpoints)
    mixes = [m for m in space.mix if not (params.get("method", "").startswith("dkd") and m != "none")] or ["none"]
    params["mix"] = trial.suggest_categorical("mix" if len(mixes) == len(space.mix) else "mix_dkd", mixes)
    if space.augment is not None:
        params["augment"] = bool(trial.suggest_categorical("augment", space.augment))
    return params


def sample_student(trial, tune: TuneConfig, feasible: Feasible) -> str:
    student = trial.suggest_categorical("student", feasible.students)
    if student != FAMILY:
        return student
    depth = int(trial.suggest_categorical("cnn_depth", sorted(feasible.max_width)))
    # one name per depth: each width distribution stays fixed, as TPE needs
    width = int(trial.suggest_int(f"cnn_width_d{depth}", tune.space.cnn_width[0], feasible.max_width[depth], log=True))
    return models.param_cnn_name(width, depth)


def last_feature_map(model: torch.nn.Module, input_shape: tuple[int, ...]) -> str | None:
    """The last top-level module whose output is a spatial map (where a feature loss attaches), if any."""
    from kdflow.models.features import probe_shapes

    names = [n for n, _ in model.named_children()]
    if not names:
        return None
    shapes = probe_shapes(model, names, input_shape, "student.arch", "model")
    spatial = [n for n in names if len(shapes[n]) == 4 and shapes[n][-1] > 1]
    return spatial[-1] if spatial else None


def trial_config(base: Config, student: str, recipe: dict[str, Any], features: list[dict] | None = None) -> Config:
    """The base config with one trial's student and recipe: what best.yaml holds for the pick."""
    raw = base.to_dict()
    raw["student"].update(arch=student, lr=recipe["lr"], epochs=recipe["epochs"])
    raw["train"].update(weight_decay=recipe["weight_decay"], mix=recipe["mix"])
    if "augment" in recipe:  # the train view searched: best.yaml prepares its data so
        raw["data"]["augment"] = recipe["augment"]
    if "method" in recipe:
        soft, _, _ = recipe["method"].partition("+")
        raw["distill"].update(
            method=soft,
            temperature=recipe["temperature"],
            alpha=recipe["alpha"],
            features=features or [],
            cache=not features,
            teacher_checkpoint=recipe.get("teacher_checkpoint", "final"),
        )
    return Config.model_validate(raw)
