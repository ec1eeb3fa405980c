"""Which loss a config name selects, and what it needs: the objective looks losses up here.

Adding a feature loss is one function and one line::

    def cosine_loss(student_feat, teacher_feat):
        return (1 - F.cosine_similarity(student_feat.flatten(1), teacher_feat.flatten(1))).mean()

    FEATURE_LOSSES["cosine"] = FeatureLoss(cosine_loss, project=True)

after which ``distill.features: [{kind: cosine, student_module: ..., teacher_module: ...}]`` trains with it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from kdflow.training import losses

if TYPE_CHECKING:
    from kdflow.config import DistillConfig


@dataclass(frozen=True)
class SoftLoss:
    """The soft term of ``distill.method``: fn(student_logits, teacher_logits_per_teacher, targets, cfg, epoch)."""

    fn: Callable[[torch.Tensor, list[torch.Tensor], torch.Tensor, DistillConfig, int], torch.Tensor]
    adversarial: bool = False  # the student's logits are on its own PGD examples (ARD), the teacher's on clean
    data_free: bool = False  # the images come from a generator (kdflow.training.data_free), never from the data
    # RSLAD (Zi et al., ICCV 2021): the attack pushes the student away from the teacher's soft labels on the clean
    # image (not from the hard label), and this share of the soft term is taken on the clean image itself
    attack_teacher: bool = False
    clean_share: float = 0.0


@dataclass(frozen=True)
class FeatureLoss:
    """A feature/relation loss fn(student_feat, teacher_feat, **params) on adapted features.

    ``project``: the adapter learns a projection of the student's channels onto the teacher's (FitNets);
    otherwise it only pools to a common spatial size. ``params``: fields of the feature spec passed by name.
    """

    fn: Callable[..., torch.Tensor]
    project: bool = False
    params: tuple[str, ...] = ()


def _kd_soft(
    s: torch.Tensor, teachers: list[torch.Tensor], y: torch.Tensor, cfg: DistillConfig, epoch: int
) -> torch.Tensor:
    if len(teachers) == 1:
        return losses.kd_soft_loss(s, teachers[0], cfg.temperature)
    return losses.soft_kl(s, losses.ensemble_soft_targets(teachers, cfg.temperature, cfg.ensemble), cfg.temperature)


def _dkd_soft(
    s: torch.Tensor, teachers: list[torch.Tensor], y: torch.Tensor, cfg: DistillConfig, epoch: int
) -> torch.Tensor:
    warm = 1.0 if cfg.dkd_warmup_epochs == 0 else min((epoch + 1) / cfg.dkd_warmup_epochs, 1.0)
    t_mean = torch.stack([t.float() for t in teachers]).mean(0)
    return warm * losses.dkd_loss(s, t_mean, y, cfg.temperature, cfg.dkd_alpha, cfg.dkd_beta)


def _dfad_soft(
    s: torch.Tensor, teachers: list[torch.Tensor], y: torch.Tensor, cfg: DistillConfig, epoch: int
) -> torch.Tensor:
    """DFAD's discrepancy: mean absolute difference of the logits (Fang et al. 2019), labels unused."""
    return (s.float() - teachers[0].float()).abs().mean()


SOFT_LOSSES: dict[str, SoftLoss] = {
    "kd": SoftLoss(_kd_soft),
    "dkd": SoftLoss(_dkd_soft),
    "ard": SoftLoss(_kd_soft, adversarial=True),
    # robust soft labels: the paper's 5/6 on the adversarial image, 1/6 on the clean one, at T=1 with no hard term
    "rslad": SoftLoss(_kd_soft, adversarial=True, attack_teacher=True, clean_share=1 / 6),
    "dfad": SoftLoss(_dfad_soft, data_free=True),
}

FEATURE_LOSSES: dict[str, FeatureLoss] = {
    "fitnets": FeatureLoss(losses.fitnets_loss, project=True),
    "at": FeatureLoss(losses.at_loss),
    "sp": FeatureLoss(losses.sp_loss),
    "rkd": FeatureLoss(losses.rkd_loss, params=("distance_weight", "angle_weight")),
    "attention": FeatureLoss(losses.attention_kl_loss),  # Transformers' attention maps (core.attention.N)
}
