"""Pretrained weights into a zoo model: from a file, an ``s3://`` object or a torchvision weights name.

A pretrained network was trained for other classes (ImageNet's 1,000) and usually RGB. The model is built
at the dataset's shape (:func:`kdflow.models.zoo.build_model`) and the weights are loaded by name and
shape: every tensor must fit, except the classifier (the last layer with one output per class, kept at
its fresh initialisation: a new head) and an RGB first convolution on grey data (its kernels summed over
the three colour channels, which answers a grey image as the RGB network answered the same image in
colour). Anything else that does not fit is another architecture: refused in one line naming the tensors.

A torchvision weights name (``ResNet18_Weights.IMAGENET1K_V1``) is looked up in the torch hub cache, never
downloaded; its file name carries the first hex digits of its sha256, which are checked.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn as nn

from kdflow.errors import CheckpointError, ModelError
from kdflow.infra.io import safe_torch_load, sha256_file

WRAPPERS = ("state_dict", "model_state_dict", "model", "module")
LR_SCALE = "kdflow_lr_scale"  # attribute on a parameter: its lr is the step's lr times this (set by fine-tuning)


def weights_file(spec: str, field: str) -> Path:
    """The local file ``spec`` names: a path, an ``s3://`` object, or a torchvision weights name."""
    if spec.startswith("s3://"):
        from kdflow.infra.checkpoints import resolve_source

        return resolve_source(spec, field)
    path = Path(spec)
    if path.is_file():
        return path
    if path.is_dir():  # a Hugging Face save_pretrained directory
        from kdflow.models.hf import pretrained_file

        found = pretrained_file(spec)
        if found is None:
            raise CheckpointError(
                field, f"'{spec}' holds no model.safetensors or pytorch_model.bin", "pass a weights file"
            )
        return found
    if re.fullmatch(r"\w+_Weights\.\w+", spec):
        return _hub_cached(spec, field)
    raise CheckpointError(
        field,
        f"'{spec}' is neither a file nor a torchvision weights name",
        "pass a .pth/.pt file, s3:// or e.g. ResNet18_Weights.IMAGENET1K_V1",
    )


def _hub_cached(name: str, field: str) -> Path:
    import torchvision.models as tvm

    try:
        url = tvm.get_weight(name).url
    except (ValueError, KeyError, AttributeError):
        raise CheckpointError(
            field, f"'{name}' is not a torchvision weights name", "e.g. ResNet18_Weights.IMAGENET1K_V1"
        ) from None
    path = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    if not path.is_file():
        raise CheckpointError(
            field,
            f"{name} is not in the torch hub cache and nothing is downloaded",
            f"put the file from {url} at {path} (or pass the file's path)",
        )
    prefix = re.search(r"-([a-f0-9]{8,})\.", path.name)
    if prefix and not sha256_file(path).startswith(prefix.group(1)):  # streamed, not read whole into memory
        raise CheckpointError(field, f"'{path}' does not match the sha256 its name carries", "download it again")
    return path


def read_state(path: Path, field: str) -> dict[str, torch.Tensor]:
    """A state dict from a weights file: bare, wrapped ({"state_dict": ...}, a kdflow checkpoint, ...), or
    saved from DataParallel/DDP ("module." prefixes)."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise CheckpointError(
                field, f"'{path}' is not a readable safetensors file ({str(e)[:60]})", "save it again"
            ) from None
    blob = safe_torch_load(path, field)
    for _ in range(2):
        if isinstance(blob, dict):
            inner = next((blob[k] for k in WRAPPERS if isinstance(blob.get(k), dict)), None)
            if inner is not None and not all(isinstance(v, torch.Tensor) for v in blob.values()):
                blob = inner
    if not isinstance(blob, dict) or not blob or not all(isinstance(v, torch.Tensor) for v in blob.values()):
        raise CheckpointError(
            field, f"'{path}' holds no state dict of tensors", "save model.state_dict() with torch.save"
        )
    return {k.removeprefix("module."): v for k, v in blob.items()}


def head_keys(model: nn.Module, num_classes: int) -> set[str]:
    """The classifier's tensors: those of the last module whose output is one unit per class."""
    last = None
    for name, mod in model.named_modules():
        weight = getattr(mod, "weight", None)
        if (
            isinstance(mod, (nn.Linear, nn.Conv2d))
            and isinstance(weight, torch.Tensor)
            and weight.shape[0] == num_classes
        ):
            last = name
    if last is None:
        return set()
    return {f"{last}.{k}" for k, _ in model.get_submodule(last).named_parameters(recurse=False)}


def load_pretrained(model: nn.Module, state: dict[str, torch.Tensor], num_classes: int, field: str) -> dict:
    """Load ``state`` into ``model`` by name and shape (see the module docstring); returns what was done."""
    own = model.state_dict()
    head = head_keys(model, num_classes)
    merged, summed, new_head, wrong = {}, [], [], []
    for key, target in own.items():
        source = state.get(key)
        if source is not None and source.shape == target.shape:
            merged[key] = source.to(target.dtype)
        elif source is not None and _rgb_to_grey(source, target):
            merged[key] = source.sum(dim=1, keepdim=True).to(target.dtype)
            summed.append(key)
        elif key in head:
            new_head.append(key)
        elif source is None and key.endswith("num_batches_tracked"):
            continue
        else:
            shape = "missing" if source is None else f"{tuple(source.shape)}"
            wrong.append(f"{key} {shape} vs {tuple(target.shape)}")
    extra = sorted(set(state) - set(own))
    if wrong or extra:
        listed = "; ".join(wrong[:3] + [f"{k} (not in the model)" for k in extra[: max(0, 3 - len(wrong))]])
        raise ModelError(
            field,
            f"the weights are not for this architecture ({len(wrong) + len(extra)} tensors do not fit: {listed})",
            "pass weights saved from the same architecture (the arch field names it)",
        )
    model.load_state_dict(merged, strict=False)
    return {"tensors_loaded": len(merged), "first_conv_summed_to_grey": summed, "new_head": sorted(new_head)}


def _rgb_to_grey(source: torch.Tensor, target: torch.Tensor) -> bool:
    return (
        source.dim() == 4
        and source.shape[1] == 3
        and target.shape[1] == 1
        and source.shape[0] == target.shape[0]
        and source.shape[2:] == target.shape[2:]
    )


def top_layers_only(model: nn.Module, top_layers: int | None, field: str) -> tuple[str, ...]:
    """The module prefixes of the layers that train when only the ``top_layers`` top ones of a layered
    backbone do (``model.blocks()``, bottom-up); everything else pretrained stays frozen. None: all train."""
    if top_layers is None:
        return ("",)
    listed = getattr(model, "blocks", None)
    blocks: list[str] = listed() if callable(listed) else []
    if not blocks:
        raise ModelError(field, "this architecture has no layers to fine-tune by count", "unset it (or use minilm)")
    if top_layers > len(blocks):
        raise ModelError(
            field, f"{top_layers} layers asked for, the model has {len(blocks)}", f"use 0 to {len(blocks)}"
        )
    return tuple(b + "." for b in blocks[len(blocks) - top_layers :])


def prepare_finetune(
    model: nn.Module,
    new_head: list[str],
    mode: str,
    backbone_lr_mult: float,
    trained: tuple[str, ...] = ("",),
    pretrained: set[str] | None = None,
) -> None:
    """``head``: only the new head trains (the backbone is frozen); ``full``: all of it, the backbone at
    ``backbone_lr_mult`` of the step's lr (a pretrained backbone needs small steps, a fresh head large ones),
    except the ``pretrained`` tensors outside the ``trained`` prefixes (the layers below the top ones)."""
    head = set(new_head)
    for name, p in model.named_parameters():
        if name in head:
            continue
        below = pretrained is not None and name in pretrained and not name.startswith(trained)
        if mode == "head" or below:
            p.requires_grad_(False)
        else:
            setattr(p, LR_SCALE, backbone_lr_mult)


def param_groups(params: list[nn.Parameter], lr: float) -> list[dict]:
    """Parameters grouped by their lr scale (one group when nothing was scaled)."""
    groups: dict[float, list[nn.Parameter]] = {}
    for p in params:
        groups.setdefault(float(getattr(p, LR_SCALE, 1.0)), []).append(p)
    return [{"params": ps, "lr": lr * scale} for scale, ps in sorted(groups.items(), reverse=True)]


def default_weights(arch: str, weights: str | None) -> str | None:
    """The weights a model starts from: ``weights``, else an ``hf:<dir>`` model's own directory."""
    if weights:
        return weights
    return arch[3:] if arch.startswith("hf:") else None


def start_from(
    model: nn.Module,
    weights: str,
    finetune: str,
    backbone_lr_mult: float,
    num_classes: int,
    field: str,
    top_layers: int | None = None,
) -> dict:
    """Pretrained weights into a freshly built model, set up for fine-tuning (all of it, its head, or its
    ``top_layers`` top layers and the head); what was loaded and adapted."""
    trained = top_layers_only(model, top_layers, field.rsplit(".", 1)[0] + ".finetune_layers")
    state = read_state(weights_file(weights, field), field)
    ignored = tuple(getattr(model, "pretrained_ignored", ()))
    if ignored:  # tensors of the checkpoint the model has no use for (a pooler, a buffer)
        state = {k: v for k, v in state.items() if not k.startswith(ignored)}
    prefix = getattr(model, "state_prefix", "")
    if prefix and not any(k.startswith(prefix) for k in state):
        state = {prefix + k: v for k, v in state.items()}
    done = load_pretrained(model, state, num_classes, field)
    pretrained = set(state) if top_layers is not None else None
    prepare_finetune(model, done["new_head"], finetune, backbone_lr_mult, trained, pretrained)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    said = f"{done['tensors_loaded']} tensors, new head {done['new_head']}, fine-tuning {finetune}"
    if top_layers is not None:
        said += f" (top {top_layers} layers; {frozen:,} parameters frozen)"
    return {**done, "finetune": finetune, "frozen_parameters": frozen, "said": said}
