"""The attack adversarial training runs on each batch: PGD against the model being trained.

Used by ARD (the student's soft term on its own adversarial examples), the adversarially trained
scratch twin and ``teacher.adversarial`` (Madry et al.: cross-entropy on the adversarial examples).
The random start of batch ``k`` is drawn from a generator seeded with (seed, k); ``k`` is a buffer of
the objective, so it is checkpointed and a resumed run draws what an uninterrupted one would have.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from kdflow.config.adversarial import AdversarialConfig
from kdflow.data.batches import stream_seed
from kdflow.evaluation.attacks import PixelModel, attack


class TrainingAttack(nn.Module):
    mean: torch.Tensor
    std: torch.Tensor
    batches_seen: torch.Tensor

    def __init__(self, cfg: AdversarialConfig, mean: tuple[float, ...], std: tuple[float, ...], seed: int):
        super().__init__()
        self.eps = cfg.training_eps
        self.steps = cfg.train_steps
        self.step_size = cfg.pgd_step(self.eps, self.steps)
        self.random_start = cfg.random_start
        self.seed = stream_seed(cfg.seed, seed)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("batches_seen", torch.zeros((), dtype=torch.long))

    def forward(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Normalised x -> normalised adversarial x (PGD in pixels, model in eval mode for the attack)."""
        x_pix = (x.detach() * self.std + self.mean).clamp(0.0, 1.0)
        gen = torch.Generator().manual_seed(stream_seed(self.seed, int(self.batches_seen)))
        self.batches_seen = self.batches_seen + 1  # a new tensor: a state_dict taken earlier keeps its value
        on_pixels = PixelModel(model, self.mean, self.std)
        x_adv = attack("pgd", on_pixels, x_pix, y, self.eps, self.steps, self.step_size, self.random_start, gen)
        return ((x_adv - self.mean) / self.std).detach()
