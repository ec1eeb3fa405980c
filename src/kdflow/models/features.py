"""Feature taps by module path (forward hooks) and adapters built from probed shapes."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdflow.errors import ModelError


def _top_level_names(model: nn.Module, depth: int = 2, most: int = 15) -> str:
    """Module paths up to ``depth`` dots deep (a wrapped model's blocks sit one level down), at most ``most``."""
    names = [name for name, _ in model.named_modules() if name and name.count(".") < depth]
    return ", ".join(names[:most]) + (f", ... ({len(names) - most} more)" if len(names) > most else "")


def resolve_module(model: nn.Module, path: str, field: str, role: str) -> nn.Module:
    if path in ("", "."):
        return model
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise ModelError(
            field,
            f"{role} has no module '{path}'",
            f"use a module path such as one of: {_top_level_names(model)} (or a dotted path into them, as named by model.named_modules())",
        ) from None


class FeatureTap:
    """Records the outputs of named submodules with forward hooks; the model is never rewritten."""

    def __init__(self, model: nn.Module, paths: list[str], field: str, role: str):
        self.features: dict[str, torch.Tensor] = {}
        self._handles = []
        for path in dict.fromkeys(paths):
            module = resolve_module(model, path, field, role)
            self._handles.append(module.register_forward_hook(self._make_hook(path)))

    def _make_hook(self, path: str):
        def hook(_module, _inputs, output):
            self.features[path] = output[0] if isinstance(output, tuple) else output

        return hook

    def pop(self) -> dict[str, torch.Tensor]:
        out, self.features = self.features, {}
        return out

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def _spatial_ratio(a: int, b: int) -> int | None:
    if a == b:
        return 1
    if a > b and a % b == 0:
        return a // b
    return None


class Adapter(nn.Module):
    """Maps a student feature onto the teacher's shape: pooling where sizes divide, then 1x1 conv or linear (per
    token for sequences)."""

    def __init__(self, s_shape: torch.Size, t_shape: torch.Size, project: bool, where: str):
        super().__init__()
        s_rank, t_rank = len(s_shape), len(t_shape)
        self.s_pool: int | str | None = None
        self.t_pool: int | str | None = None
        self.proj: nn.Module = nn.Identity()
        bad = ModelError(
            where,
            f"cannot bridge student shape {tuple(s_shape[1:])} and teacher shape {tuple(t_shape[1:])}",
            "pick modules whose spatial sizes are equal or integer multiples, 2-D/4-D outputs, or token sequences of one length",
        )
        if s_rank == 3 or t_rank == 3:  # token sequences (batch x tokens x width): a projection per token
            if s_rank != t_rank or s_shape[1] != t_shape[1]:
                raise bad
            if project and s_shape[2] != t_shape[2]:
                self.proj = nn.Linear(s_shape[2], t_shape[2], bias=False)  # padding stays zero (no bias)
            return
        if s_rank not in (2, 4) or t_rank not in (2, 4):
            raise bad
        if s_rank == 4 and t_rank == 4:
            sh, th = s_shape[2], t_shape[2]
            if s_shape[2] != s_shape[3] or t_shape[2] != t_shape[3]:
                raise bad
            if (r := _spatial_ratio(sh, th)) is not None:
                self.s_pool = r if r > 1 else None
            elif (r := _spatial_ratio(th, sh)) is not None:
                self.t_pool = r
            else:
                raise bad
            # channel-free losses (AT, SP, RKD) need no projection
            if project and s_shape[1] != t_shape[1]:
                self.proj = nn.Sequential(nn.Conv2d(s_shape[1], t_shape[1], 1, bias=False), nn.BatchNorm2d(t_shape[1]))
        else:
            self.s_pool = "global" if s_rank == 4 else None
            self.t_pool = "global" if t_rank == 4 else None
            if project and s_shape[1] != t_shape[1]:
                self.proj = nn.Linear(s_shape[1], t_shape[1], bias=False)

    @staticmethod
    def _pool(x: torch.Tensor, how: int | str | None) -> torch.Tensor:
        if how is None:
            return x
        if how == "global":
            return x.float().mean(dim=(2, 3))
        return F.avg_pool2d(x, int(how))

    def forward(self, s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.proj(self._pool(s, self.s_pool)), self._pool(t, self.t_pool)


@torch.no_grad()
def probe_shapes(
    model: nn.Module, paths: list[str], input_shape: tuple[int, ...], field: str, role: str
) -> dict[str, torch.Size]:
    """Run one dummy batch of 2 through ``model`` (in eval mode, restored after) and record shapes."""
    tap = FeatureTap(model, paths, field, role)
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(2, *input_shape))
    finally:
        model.train(was_training)
        tap.remove()
    return {k: v.shape for k, v in tap.pop().items()}
