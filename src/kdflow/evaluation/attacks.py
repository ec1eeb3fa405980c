"""L-inf attacks (FGSM, PGD with random start) in the [0, 1] pixel scale, before normalisation.

Models take normalised inputs; :class:`PixelModel` puts the normalisation inside, so an attack moves
pixels, stays in the eps-ball and in [0, 1], and its eps means grey levels (0.1 ~ 25 of 255).
The random start draws from an explicit ``torch.Generator``: same seed, same adversarial examples.
Tests check these against torchattacks (an independent implementation) and numerically.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdflow.data.batches import Normalizer, Split, iterate


class PixelModel(nn.Module):
    """``model((x - mean) / std)`` for x in [0, 1]: what an attack differentiates.

    It takes the wrapped model's train/eval mode, so :func:`attack`, which restores the wrapper's mode,
    leaves a model in eval mode in eval mode (batch-norm statistics untouched).
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, model: nn.Module, mean: tuple[float, ...] | torch.Tensor, std: tuple[float, ...] | torch.Tensor):
        super().__init__()
        self.model = model
        self.training = model.training
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)

    def to_pixels(self, x_normalised: torch.Tensor) -> torch.Tensor:
        return x_normalised * self.std + self.mean

    def to_model(self, x_pixels: torch.Tensor) -> torch.Tensor:
        return (x_pixels - self.mean) / self.std


def _loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on labels or on soft targets (mixed images): what the attack maximises."""
    return F.cross_entropy(logits.float(), y)


def _input_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    with torch.autocast(x.device.type, enabled=False):
        (grad,) = torch.autograd.grad(_loss(model(x), y), x)
    return grad


def _project(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """One signed-gradient step of size eps (Goodfellow et al. 2015); x in [0, 1]."""
    x = x.detach()
    if eps == 0:
        return x.clone()
    return (x + eps * _input_grad(model, x, y).sign()).clamp(0.0, 1.0).detach()


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int,
    step_size: float,
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Projected gradient ascent on the loss in the L-inf eps-ball around x, inside [0, 1] (Madry et al. 2018)."""
    x = x.detach()
    if eps == 0:
        return x.clone()
    x_adv = x.clone()
    if random_start:
        noise = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        x_adv = (x + (2 * noise - 1) * eps).clamp(0.0, 1.0)
    for _ in range(steps):
        x_adv = _project(x_adv + step_size * _input_grad(model, x_adv, y).sign(), x, eps)
    return x_adv.detach()


def attack(
    kind: str,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int,
    step_size: float,
    random_start: bool,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """FGSM or PGD on ``model`` (a :class:`PixelModel`) in eval mode; the model's mode is restored."""
    was_training = model.training
    model.eval()
    try:
        if kind == "fgsm":
            return fgsm(model, x, y, eps)
        return pgd(model, x, y, eps, steps, step_size, random_start, generator)
    finally:
        model.train(was_training)


def adversarial_batches(
    model: nn.Module,
    split: Split,
    normalizer: Normalizer,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    *,
    kind: str,
    eps: float,
    steps: int,
    step_size: float,
    random_start: bool,
    seed: int,
    samples: int,
    batch_size: int = 250,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(adversarial pixels, labels) for the first ``samples`` of ``split``, crafted against ``model``.

    Each batch's random start comes from a generator seeded with (seed, batch index): the same examples
    for any model order and any caller, so a transferred attack sees exactly what the source saw.
    """
    pixel_model = PixelModel(model, mean, std)
    head = Split(split.x[:samples], split.y[:samples])
    for i, (xb, yb, _) in enumerate(iterate(head, batch_size, normalizer)):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + i)
        x_pix = pixel_model.to_pixels(xb).clamp(0.0, 1.0)
        yield attack(kind, pixel_model, x_pix, yb, eps, steps, step_size, random_start, gen), yb
