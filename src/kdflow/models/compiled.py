"""Opt-in torch.compile of a frozen teacher (``distill.compile_teacher``).

The teacher forward is most of an online KD step and all of a teacher-cache build; bench/compile.py
measures what compiling it buys on this machine. Only the forward of an eval-mode, gradient-free model
is compiled: the student keeps training eagerly, so resume, DDP and checkpoints are untouched.
"""

from __future__ import annotations

import os
import shutil

import torch
import torch.nn as nn

from kdflow.errors import ConfigError

FIELD = "distill.compile_teacher"


def require_cpp_compiler() -> None:
    """Inductor builds C++ kernels on CPU; without a compiler it would fail deep inside the first batch."""
    candidates = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "c++", "clang++"]
    if not any(shutil.which(c) for c in candidates):
        raise ConfigError(
            FIELD,
            f"torch.compile needs a C++ compiler and none of {', '.join(candidates)} is on PATH",
            "install one (apt-get install g++) or set distill.compile_teacher=false",
        )


def compile_frozen(model: nn.Module) -> nn.Module:
    """A compiled forward of ``model`` in eval mode; parameters stay shared with ``model``."""
    require_cpp_compiler()
    model.eval().requires_grad_(False)
    return torch.compile(model)  # type: ignore[return-value]  # an OptimizedModule, called like the model


class ChannelsLast(nn.Module):
    """A frozen model run in channels_last (``teacher.channels_last``): same fp32 arithmetic, faster on CPU."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x)


def frozen_forward(model: nn.Module, channels_last: bool, compiled: bool) -> nn.Module:
    """A frozen teacher's forward (online KD, cache build): in the teacher's layout, compiled when asked."""
    forward = ChannelsLast(model) if channels_last else model
    return compile_frozen(forward) if compiled else forward
