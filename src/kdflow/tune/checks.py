"""What a tune refuses before it trains anything: a budget no student meets, a space the transfer set cannot
feed, an unreadable extra teacher. ``kdflow tune`` and the autodistill DAG's check step share them."""

from __future__ import annotations

from pathlib import Path

from kdflow.config import Config
from kdflow.data import prepared as data
from kdflow.errors import ConfigError
from kdflow.tune import space


def known_inputs(cfg: Config) -> tuple[tuple[int, ...], int, dict[str, dict] | None] | None:
    """(input shape, classes, named inputs) known before the data is prepared; None for an image folder."""
    from kdflow.steps.preflight import builtin_shape, known_inputs_of

    named = known_inputs_of(cfg)
    if named is not None:
        return named
    shape = builtin_shape(cfg)
    return (*shape, None) if shape is not None else None


def check_budget(cfg: Config, data_dir: Path | None = None) -> None:
    """A budget (size, MACs, latency) no student in the space meets is a one-line error: from the prepared
    data's manifest when given, else from the inputs known before prep (nothing to check for an image folder)."""
    if data_dir is None:
        known = known_inputs(cfg)
        if known is None:
            return
        shape, num_classes, layout = known
    else:
        manifest = data.load_manifest(data_dir)
        shape, num_classes, layout = tuple(manifest["input_shape"]), manifest["num_classes"], manifest.get("inputs")
    build = space.student_builder(cfg, shape, num_classes, layout)
    space.check_latency_budget(cfg.tune, space.feasible_students(cfg.tune, shape, build), shape, build)


def check_space_for_pool(cfg: Config) -> None:
    """A recipe the space may sample that needs every image's label cannot learn from the transfer set."""
    fix = "set distill.unlabeled=false, or keep only such choices in the space"
    if any(m != "none" for m in cfg.tune.space.mix):
        raise ConfigError("tune.space.mix", "mixed targets need labels; the unlabeled transfer set has none", fix)
    from kdflow.training.loss_registry import SOFT_LOSSES

    soft = [m.partition("+")[0] for m in cfg.tune.space.methods]
    if any(m.startswith("dkd") or SOFT_LOSSES[m].adversarial for m in soft):
        raise ConfigError(
            "tune.space.methods", "DKD, ARD and RSLAD need every image's label; the transfer set has none", fix
        )


def check_before_work(cfg: Config) -> None:
    """Everything ``kdflow tune`` can refuse before prep: the pool's space, the extra teachers, the budget
    when the inputs are known (an image folder's budget is checked right after prep)."""
    if cfg.distill.unlabeled and (cfg.data.labels_kept or cfg.data.unlabeled):
        check_space_for_pool(cfg)
    for i, extra in enumerate(cfg.distill.extra_teachers):
        from kdflow.steps.preflight import check_teacher

        check_teacher(extra.source, f"distill.extra_teachers[{i}].source", cfg)
    check_budget(cfg)
