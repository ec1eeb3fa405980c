"""Precise BatchNorm statistics: the running mean and variance recomputed for the current weights.

BatchNorm's running statistics are an exponential average over the batches of training, so they describe
weights of the last ~1/momentum steps. At PyTorch's momentum 0.1 that is the last ~10 batches; torchvision's
MobileNetV3 and EfficientNet (and many timm models) use 0.01, made for hundreds of ImageNet epochs, whose
statistics then lag the weights by ~100 batches of a short schedule: measured on the glyph bench, a
mobilenet_v3_small at 97% train accuracy scored 38% on val with its own statistics and 98% once recomputed.
Before every validation, :func:`recalibrate` recomputes them as an exact average over a fixed, seeded set of
train batches in the evaluation view (PreciseBN, Wu & Johnson 2021), with no gradient and nothing else
changed. ``train.precise_bn: auto`` does so only for models with such slow statistics, so models at
momentum 0.1 train exactly as before.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from kdflow.data.prepared import Normalizer, Split, iterate

SLOW_MOMENTUM = 0.1  # below this (or None, a cumulative average over all of training) the statistics lag


def batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def wanted(mode: str, model: nn.Module) -> bool:
    """``on``, ``off``, or ``auto``: on when a BatchNorm layer's statistics lag (momentum None or < 0.1)."""
    if mode != "auto":
        return mode == "on" and bool(batchnorms(model))
    return any(m.momentum is None or m.momentum < SLOW_MOMENTUM for m in batchnorms(model))


@torch.no_grad()
def recalibrate(
    model: nn.Module,
    train: Split,
    normalizer: Normalizer,
    augmentation: dict | None,
    batches: int,
    batch_size: int,
    device: torch.device,
    channels_last: bool = False,
) -> int:
    """Recompute every BatchNorm's running statistics over ``batches`` seeded train batches; returns how many
    images it saw. The same batches on every DDP rank, so the ranks' statistics agree without communication."""
    layers = batchnorms(model)
    if not layers:
        return 0
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: every batch weighs the same
    was_training = model.training
    model.train()
    eval_view = {**(augmentation or {}), "enabled": False}  # the view validation and test see
    seen = 0
    try:
        for i, (xb, _, _) in enumerate(iterate(train, batch_size, normalizer, shuffle=True, augment=eval_view, seed=0)):
            if i >= batches:
                break
            xb = xb.to(device)
            model(xb.contiguous(memory_format=torch.channels_last) if channels_last and xb.dim() == 4 else xb)
            seen += len(xb)
    finally:
        for m, momentum in zip(layers, momenta, strict=True):
            m.momentum = momentum
        model.train(was_training)
    return seen
