"""Named inputs: which of a dataset's inputs a model sees (``teacher.inputs``, ``student.inputs``).

A feature dataset's batch is one packed float row per sample; its manifest's ``inputs`` names the columns of
each modality (``view:fou`` ...) and their shape (``image``: 1x16x15). :class:`Selected` wraps a model so it
takes the packed batch and sees only its own inputs, as a mapping from name to tensor, so a teacher on all six
views and a student on one train, evaluate and distil through the same loop, objective and cache as image
models do. What is deployed is the model on its own inputs alone (:meth:`Selected.deployable`): a student
exported from a teacher that saw more never asks for the teacher's modalities.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from kdflow.errors import ConfigError, ModelError

FEATURE_ARCHS = ("mlp", "linear", "fusion-mlp")  # models of feature vectors; any image model takes an image input


class FusionMLP(nn.Module):
    """Late fusion of several views: one encoder per view (Linear-BN-ReLU), concatenated, a fused layer (the
    embedding feature losses can tap as ``core.fuse``), the classifier."""

    named_inputs = True

    def __init__(self, widths: dict[str, int], num_classes: int, hidden: int = 128, fused: int = 256):
        super().__init__()
        self.encoders = nn.ModuleDict(
            {n: nn.Sequential(nn.Linear(w, hidden), nn.BatchNorm1d(hidden), nn.ReLU()) for n, w in widths.items()}
        )
        self.fuse = nn.Sequential(
            nn.Linear(hidden * len(widths), fused), nn.BatchNorm1d(fused), nn.ReLU(), nn.Dropout(0.2)
        )
        self.head = nn.Linear(fused, num_classes)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        h = torch.cat([enc(inputs[n].flatten(1)) for n, enc in self.encoders.items()], 1)
        return self.head(self.fuse(h))


def _width(shape: list[int] | tuple[int, ...]) -> int:
    return math.prod(int(d) for d in shape)


class Selected(nn.Module):
    """``core`` on the named inputs ``names`` of a packed batch (``layout``: name -> columns, shape)."""

    def __init__(self, core: nn.Module, names: list[str], layout: dict[str, dict]):
        super().__init__()
        self.core = core
        self.names = list(names)
        self.layout = {
            n: dict(layout[n], columns=list(layout[n]["columns"]), shape=list(layout[n]["shape"])) for n in names
        }

    @property
    def state_prefix(self) -> str:
        """Where pretrained weights of the core go (under ``core.``)."""
        return "core." + getattr(self.core, "state_prefix", "")

    @property
    def pretrained_ignored(self) -> tuple[str, ...]:
        return tuple(getattr(self.core, "pretrained_ignored", ()))

    def blocks(self) -> list[str]:
        """The core's layers bottom-up, when it has any (fine-tuning only the top ones)."""
        blocks = getattr(self.core, "blocks", None)
        return ["core." + b for b in blocks()] if callable(blocks) else []

    def parts(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for n in self.names:
            a, b = self.layout[n]["columns"]
            out.append(x[:, a:b].reshape(len(x), *self.layout[n]["shape"]))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = self.parts(x)
        if getattr(self.core, "named_inputs", False):
            return self.core(dict(zip(self.names, parts, strict=True)))
        if len(parts) == 1:
            return self.core(parts[0])
        return self.core(torch.cat([p.flatten(1) for p in parts], 1))

    def columns(self) -> list[int]:
        """The packed row's columns this model reads, in its input order."""
        return [c for n in self.names for c in range(*self.layout[n]["columns"])]

    def deployable(self) -> tuple[nn.Module, tuple[int, ...]]:
        """(the model on its own inputs alone, that input's shape): one input as its shape (an image stays an
        image), several as their columns side by side."""
        if len(self.names) == 1 and not getattr(self.core, "named_inputs", False):
            return self.core, tuple(self.layout[self.names[0]]["shape"])
        rebased, start = {}, 0
        for n in self.names:
            w = _width(self.layout[n]["shape"])
            rebased[n] = dict(self.layout[n], columns=[start, start + w])
            start += w
        return Selected(self.core, self.names, rebased), (start,)

    def spec(self) -> dict:
        """What a checkpoint records to rebuild this model."""
        return {"names": self.names, "layout": self.layout}


def resolve_names(names: list[str] | None, layout: dict[str, dict] | None, field: str, dataset: str) -> list[str]:
    """The inputs a model sees: ``names`` checked against the dataset's, or by default every ``view:``."""
    if layout is None:
        if names not in (None, ["image"]):
            raise ConfigError(
                field, f"{names} asked for, but {dataset} has one input, image", f"unset {field} (or set [image])"
            )
        return ["image"]
    if not names:  # in column order (a manifest's keys may come back sorted)
        views = [n for n in layout if n.startswith("view:")] or list(layout)
        return sorted(views, key=lambda n: layout[n]["columns"][0])
    unknown = [n for n in names if n not in layout]
    if unknown:
        raise ConfigError(
            field, f"{unknown[0]!r} is not an input of {dataset}", f"use some of {', '.join(layout)} (or unset it)"
        )
    if len(set(names)) != len(names):
        raise ConfigError(field, f"{names} names an input twice", "list each input once")
    return list(names)


def build_selected(arch: str, num_classes: int, names: list[str], layout: dict[str, dict]) -> Selected:
    """``arch`` on the named inputs: ``fusion-mlp`` fuses any set of them, ``mlp`` takes their columns side by side,
    an image model takes one image input."""
    from kdflow.models.text import TEXT_ARCHS, build_text
    from kdflow.models.zoo import MLP, build_model

    shapes = [layout[n]["shape"] for n in names]
    if arch in TEXT_ARCHS or "vocab_size" in layout[names[0]]:
        if arch not in TEXT_ARCHS or len(names) != 1 or "vocab_size" not in layout[names[0]]:
            raise ModelError(
                "arch",
                f"'{arch}' on {names}: text models read one input of token ids",
                "use text-bag, text-transformer or minilm on [tokens], and mlp, linear or fusion-mlp on feature views",
            )
        core: nn.Module = build_text(arch, num_classes, shapes[0], int(layout[names[0]]["vocab_size"]))
    elif arch == "linear":
        core = nn.Sequential(nn.Flatten(), nn.Linear(sum(_width(s) for s in shapes), num_classes))
    elif arch == "fusion-mlp":
        core = FusionMLP({n: _width(s) for n, s in zip(names, shapes, strict=True)}, num_classes)
    elif arch == "mlp":
        core = MLP(num_classes, in_features=sum(_width(s) for s in shapes))
    elif len(names) == 1 and len(shapes[0]) == 3:
        c, h, w = (int(d) for d in shapes[0])
        core = build_model(arch, num_classes, c, (h, w) if h != w else h)
    else:
        raise ModelError(
            "arch",
            f"'{arch}' takes one image, and {names} are feature vectors",
            f"use {', '.join(FEATURE_ARCHS)} for feature inputs, or an image model on the input image",
        )
    return Selected(core, names, layout)


def build_for_data(
    arch: str,
    num_classes: int,
    input_shape: tuple[int, ...],
    layout: dict[str, dict] | None,
    names: list[str] | None,
    field: str,
    dataset: str,
) -> nn.Module:
    """A fresh model for a prepared dataset: an image model on its images, or :class:`Selected` on named inputs."""
    from kdflow.models.zoo import build_model

    chosen = resolve_names(names, layout, field, dataset)
    if layout is None:
        c, h, w = input_shape
        return build_model(arch, num_classes, c, h if h == w else (h, w))
    return build_selected(arch, num_classes, chosen, layout)


def check_same_inputs(model: nn.Module, layout: dict[str, dict] | None, field: str) -> None:
    """A model trained on named inputs reads the same columns of this dataset (a teacher from another prep)."""
    if not isinstance(model, Selected):
        if layout is not None:
            raise ModelError(field, "an image model cannot read this dataset's feature rows", "train it on this data")
        return
    for n in model.names:
        if layout is None or layout.get(n) != model.layout[n]:
            raise ModelError(
                field,
                f"the model reads input {n!r} at {model.layout[n]}, this dataset has {layout and layout.get(n)}",
                "use a model trained on this dataset's inputs",
            )
