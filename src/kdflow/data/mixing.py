"""Mixup and CutMix with explicit per-sample parameters, so a teacher cache can store what it mixed.

Each sample i is mixed with a partner (a train-set index) under weight ``lam`` (the share of sample i):
mixup blends the two normalized images; cutmix pastes the partner's box ``(r0, r1, c0, c1)`` and sets
``lam`` to the share of pixels left. The targets are ``lam * onehot(y_i) + (1 - lam) * onehot(y_partner)``.
The teacher -- live or cached -- sees exactly the mixed image the student sees (function matching).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class MixParams:
    partner: torch.Tensor  # (n,) int64 train-set index of each sample's partner
    lam: torch.Tensor  # (n,) float32 share of the sample itself
    box: torch.Tensor  # (n, 4) int64 cutmix box r0, r1, c0, c1 (empty for mixup)

    def take(self, idx: torch.Tensor | slice) -> MixParams:
        return MixParams(self.partner[idx], self.lam[idx], self.box[idx])

    def to(self, device: torch.device) -> MixParams:
        return MixParams(self.partner, self.lam.to(device), self.box.to(device))


def draw_mix(
    n: int, num_train: int, kind: str, alpha: float, image_hw: tuple[int, ...], gen: torch.Generator
) -> MixParams:
    """Partners, weights and boxes for ``n`` samples; a pure function of the generator's state."""
    partner = torch.randint(0, num_train, (n,), generator=gen)
    rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
    lam = torch.from_numpy(rng.beta(alpha, alpha, size=n).astype(np.float32))
    box = torch.zeros(n, 4, dtype=torch.long)
    if kind == "cutmix":
        h, w = image_hw
        cut = torch.sqrt(1.0 - lam)
        ch, cw = (cut * h).long(), (cut * w).long()
        cy = torch.randint(0, h, (n,), generator=gen)
        cx = torch.randint(0, w, (n,), generator=gen)
        box = torch.stack(
            [
                (cy - ch // 2).clamp(0, h),
                (cy + ch // 2).clamp(0, h),
                (cx - cw // 2).clamp(0, w),
                (cx + cw // 2).clamp(0, w),
            ],
            dim=1,
        )
        area = (box[:, 1] - box[:, 0]) * (box[:, 3] - box[:, 2])
        lam = 1.0 - area.float() / (h * w)
    elif kind != "mixup":
        raise ValueError(f"unknown mix kind '{kind}'")
    return MixParams(partner, lam, box)


def apply_mix(x: torch.Tensor, partner_x: torch.Tensor, mix: MixParams, kind: str) -> torch.Tensor:
    """Mix a normalized float batch with its partners' (already augmented and normalized) images."""
    if kind == "mixup":
        lam = mix.lam.to(x.dtype).view(-1, 1, 1, 1)
        return lam * x + (1.0 - lam) * partner_x
    h, w = x.shape[-2:]
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    b = mix.box
    inside = (
        (rows >= b[:, 0, None, None])
        & (rows < b[:, 1, None, None])
        & (cols >= b[:, 2, None, None])
        & (cols < b[:, 3, None, None])
    )
    return torch.where(inside[:, None], partner_x, x)


def mixed_targets(y: torch.Tensor, partner_y: torch.Tensor, lam: torch.Tensor, num_classes: int) -> torch.Tensor:
    lam = lam.view(-1, 1)
    return lam * F.one_hot(y, num_classes).float() + (1.0 - lam) * F.one_hot(partner_y, num_classes).float()


def hard_labels(targets: torch.Tensor) -> torch.Tensor:
    """Class indices for accuracy: the label itself, or the dominant class of mixed targets."""
    return targets.argmax(1) if targets.dim() == 2 else targets
