"""Checks that run before a step writes its first byte or trains its first batch.

A failure here leaves ``--out`` as it was: model names, feature module paths (on models built without
weights), teacher checkpoints and URIs are all validated up front.
"""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from kdflow.config import Config
from kdflow.config.sections import FEATURE_DATASETS
from kdflow.errors import ConfigError, ModelError
from kdflow.models import zoo as models
from kdflow.models.inputs import build_for_data

# Input shape and class count of the built-in datasets, for checks made before the data is prepared.
KNOWN_SHAPES = {"fashion-mnist": ((1, 28, 28), 10), "mnist": ((1, 28, 28), 10), "cifar10": ((3, 32, 32), 10)}


def _layout(cfg: Config) -> dict[str, dict] | None:
    """The named inputs of a feature dataset, known before it is prepared; None for images."""
    if cfg.data.dataset in FEATURE_DATASETS:
        from kdflow.data.features import inputs

        return inputs(cfg.data)
    return None


def known_inputs_of(cfg: Config) -> tuple[tuple[int, ...], int, dict[str, dict]] | None:
    """(row shape, classes, named inputs) of a feature dataset before it is prepared; None for images."""
    layout = _layout(cfg)
    if layout is None:
        return None
    width = max(int(v["columns"][1]) for v in layout.values())
    classes = cfg.data.supersenses if cfg.data.dataset == "wordnet-supersense" else 10  # multiview: ten digits
    return (width,), classes, layout


def builtin_shape(cfg: Config) -> tuple[tuple[int, ...], int] | None:
    """A built-in image dataset's input shape (at ``data.channels`` and ``data.image_size`` when set, as prep
    fits it) and class count; None for any other dataset."""
    if cfg.data.dataset not in KNOWN_SHAPES:
        return None
    (channels, height, width), classes = KNOWN_SHAPES[cfg.data.dataset]
    size = cfg.data.image_size
    return (cfg.data.channels or channels, size or height, size or width), classes


def _known_shape(cfg: Config) -> tuple[tuple[int, ...], int]:
    known = known_inputs_of(cfg)
    if known is not None:
        return known[0], known[1]
    return builtin_shape(cfg) or ((1, 28, 28), 10)


def build(
    arch: str, field: str, shape: tuple[int, ...], num_classes: int, cfg: Config | None = None, inputs_of: str = ""
) -> nn.Module:
    """``arch`` for the dataset (with ``cfg``: on the named inputs ``<inputs_of>.inputs`` asks for)."""
    layout = _layout(cfg) if cfg is not None else None
    names = getattr(cfg, inputs_of).inputs if cfg is not None and inputs_of else None
    try:
        if cfg is not None and (layout is not None or names is not None):
            return build_for_data(arch, num_classes, shape, layout, names, f"{inputs_of}.inputs", cfg.data.dataset)
        return models.build_model(arch, num_classes, shape[0], shape[1])
    except ModelError as e:
        raise ModelError(field if e.field == "arch" else e.field, e.problem, e.fix) from None


def check_models(cfg: Config, teacher: nn.Module | None = None) -> None:
    """Teacher and student names resolve, on inputs the dataset has; the feature pairings fit (built without
    weights, one dummy batch)."""
    shape, num_classes = _known_shape(cfg)
    student = build(cfg.student.arch, "student.arch", shape, num_classes, cfg, "student")
    if cfg.distill.assistant is not None:
        build(cfg.distill.assistant.arch, "distill.assistant.arch", shape, num_classes, cfg, "student")
    if teacher is None and not cfg.teacher.source:  # a given teacher is checked where it is loaded
        teacher = build(cfg.teacher.arch, "teacher.arch", shape, num_classes, cfg, "teacher")
    if (
        teacher is not None
        and cfg.distill.features
        and (cfg.data.dataset in KNOWN_SHAPES or cfg.data.dataset in FEATURE_DATASETS)
    ):
        from kdflow.training.objective import DistillObjective

        DistillObjective([teacher], student, cfg.distill, shape, num_classes).close()


def check_black_box(cfg: Config, teachers: list[nn.Module]) -> None:
    """An ONNX teacher gives logits only: no gradients for data-free distillation, no modules to tap."""
    from kdflow.models.onnx_teacher import is_black_box

    if not any(is_black_box(t) for t in teachers):
        return
    if cfg.distill.data_free:
        raise ConfigError(
            "distill.data_free",
            "data-free distillation backpropagates through the teacher, and an ONNX teacher gives no gradients",
            "use a PyTorch teacher (a kdflow checkpoint) or distil on data",
        )
    if cfg.distill.features:
        raise ConfigError(
            "distill.features",
            "an ONNX teacher is a black box: it has no modules to tap for feature or relation losses",
            "remove distill.features (logit losses work) or use a PyTorch teacher",
        )


def _data_shape(cfg: Config, data_dir: Path | None) -> tuple[tuple[int, ...], int] | None:
    """(input shape, classes) of the prepared data, or of a built-in dataset; None when unknown before prep."""
    if data_dir is not None:
        from kdflow.data.prepared import load_manifest

        manifest = load_manifest(data_dir)
        return tuple(manifest["input_shape"]), int(manifest["num_classes"])
    known = known_inputs_of(cfg)
    return (known[0], known[1]) if known is not None else builtin_shape(cfg)


def check_teacher(
    source: str, field: str = "teacher", cfg: Config | None = None, data_dir: Path | None = None
) -> nn.Module | None:
    """A given teacher: reachable, a kdflow checkpoint loadable without unpickling code, or (with ``cfg``) an
    ONNX file that fits the data (checked on its shape when the data's shape is known) and the recipe."""
    from kdflow.infra import checkpoints
    from kdflow.infra.onnx_file import is_onnx, load_onnx_teacher, open_onnx

    if cfg is None or not is_onnx(source):
        return checkpoints.load_model(source, field=field)[0]
    path = checkpoints.resolve_source(source, field)
    known = _data_shape(cfg, data_dir)
    model = load_onnx_teacher(path, known[1], known[0], field) if known else open_onnx(path, 1, 1, field)
    check_black_box(cfg, [model])
    return model if known else None


def check_run(cfg: Config, teacher_source: str | None, data_dir: Path | None = None) -> None:
    """Everything `kdflow run` can know before it prepares data or trains a teacher."""
    teacher = check_teacher(teacher_source, "teacher", cfg, data_dir) if teacher_source else None
    for i, extra in enumerate(cfg.distill.extra_teachers):
        check_teacher(extra.source, f"distill.extra_teachers[{i}].source", cfg, data_dir)
    check_models(cfg, teacher)


def check_transfer_set(cfg: Config, role: str) -> None:
    """What cannot learn from images without labels is refused in one line."""
    from kdflow.infra.fingerprint import trains_adversarially

    method, fix = cfg.distill.method, "set distill.unlabeled=false, or drop the pool (data.labels_kept, data.unlabeled)"
    if method.startswith("dkd") or cfg.distill.adversarial:
        raise ConfigError(
            "distill.method", f"{method} needs every training image's label; the unlabeled transfer set has none", fix
        )
    if cfg.train_for("student").mix != "none":
        raise ConfigError("train.mix", "mixed targets need labels; the unlabeled transfer set has none", fix)
    if trains_adversarially(cfg, role):
        raise ConfigError("adversarial", "adversarial training attacks the label; the transfer set has none", fix)
