"""The optimizer (SGD with nesterov, or AdamW) and the learning-rate schedule (warm-up, then cosine/step/constant)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from kdflow.config import TrainConfig


def lr_factor(step: int, steps_per_epoch: int, epochs: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine to 0 / step decay / constant. ``step`` counts optimizer steps."""
    warm = int(round(cfg.warmup_epochs * steps_per_epoch))
    if warm > 0 and step < warm:
        return (step + 1) / warm
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "step":
        return cfg.gamma ** (step // (cfg.step_size * steps_per_epoch))
    total = max(1, epochs * steps_per_epoch - warm)
    return 0.5 * (1.0 + math.cos(math.pi * min(step - warm, total) / total))


def build_optimizer(params: list[nn.Parameter], cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """SGD or AdamW; parameters a fine-tuning marked with an lr scale get their own group."""
    from kdflow.infra.pretrained import param_groups

    groups = param_groups(params, lr)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(
        groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0, weight_decay=cfg.weight_decay
    )
