"""Training objectives: the only thing that differs between teacher, scratch and distillation training.

An objective is an ``nn.Module`` whose parameters (feature adapters) are trained with the student.
Teachers are held outside the module tree, so they never enter the optimizer, ``state_dict`` or DDP.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdflow.config import DistillConfig
from kdflow.errors import ModelError
from kdflow.models.compiled import frozen_forward
from kdflow.models.features import Adapter, FeatureTap, probe_shapes
from kdflow.training import losses
from kdflow.training.adversarial import TrainingAttack
from kdflow.training.loss_registry import FEATURE_LOSSES, SOFT_LOSSES


class SupervisedObjective(nn.Module):
    """Cross-entropy: teacher training and the scratch baseline.

    With an ``adversary`` it is adversarial training (Madry et al. 2018): cross-entropy on the PGD
    examples the adversary crafts against the model, as ARD's scratch twin and ``teacher.adversarial``.
    """

    def __init__(self, adversary: TrainingAttack | None = None):
        super().__init__()
        self.adversary = adversary

    def forward(
        self, student: nn.Module, x: torch.Tensor, y: torch.Tensor, epoch: int
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        if self.adversary is not None:
            x = self.adversary(student, x, y)
        logits = student(x)
        hard = F.cross_entropy(logits.float(), y)
        return hard, logits, {"hard": hard.detach()}

    def close(self) -> None:
        pass


def freeze(teacher: nn.Module) -> nn.Module:
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


class DistillObjective(nn.Module):
    """alpha*CE + (1-alpha)*soft + sum_i w_i * feature/relation loss_i, each term from :mod:`kdflow.training.loss_registry`."""

    def __init__(
        self,
        teachers: list[nn.Module],
        student: nn.Module,
        cfg: DistillConfig,
        input_shape: tuple[int, ...],
        num_classes: int,
        adversary: TrainingAttack | None = None,
        teacher_channels_last: bool = False,
    ):
        super().__init__()
        if SOFT_LOSSES[cfg.method].adversarial and adversary is None:
            raise ModelError("distill.method", f"'{cfg.method}' trains on adversarial examples", "pass an adversary")
        self.adversary = adversary
        if not teachers:
            raise ModelError("teacher", "distillation needs at least one teacher", "set teacher.source or train one")
        self._teachers = [freeze(t) for t in teachers]  # a plain list: not submodules
        self.cfg = cfg
        self.specs = list(cfg.features)
        self.adapters = nn.ModuleList()
        self.student_tap = self.teacher_tap = None
        probe_in = tuple(input_shape)
        s_out = probe_shapes(student, [""], probe_in, "student.arch", "student")[""]
        for i, t in enumerate(self._teachers):
            t_out = probe_shapes(t, [""], probe_in, "teacher.arch", f"teacher {i}")[""]
            if t_out[-1] != s_out[-1] or t_out[-1] != num_classes:
                raise ModelError(
                    "teacher",
                    f"teacher {i} outputs {t_out[-1]} classes, student {s_out[-1]}, data {num_classes}",
                    "use teacher and student with the same class count",
                )
        if self.specs:
            s_paths = [s.student_module for s in self.specs]
            t_paths = [s.teacher_module for s in self.specs]
            s_shapes = probe_shapes(student, s_paths, probe_in, "distill.features.student_module", "student")
            t_shapes = probe_shapes(self._teachers[0], t_paths, probe_in, "distill.features.teacher_module", "teacher")
            for i, spec in enumerate(self.specs):
                where = f"distill.features[{i}] (student '{spec.student_module}' -> teacher '{spec.teacher_module}')"
                self.adapters.append(
                    Adapter(
                        s_shapes[spec.student_module],
                        t_shapes[spec.teacher_module],
                        project=FEATURE_LOSSES[spec.kind].project,
                        where=where,
                    )
                )
            self.student_tap = FeatureTap(student, s_paths, "distill.features.student_module", "student")
            self.teacher_tap = FeatureTap(self._teachers[0], t_paths, "distill.features.teacher_module", "teacher")
        # compiled after the shape probes, so the compiled forward only ever sees training batches
        # in the teacher's own layout (teacher.channels_last: the same fp32 arithmetic), compiled when asked
        self._teacher_forwards = [frozen_forward(t, teacher_channels_last, cfg.compile_teacher) for t in self._teachers]

    @property
    def teachers(self) -> list[nn.Module]:
        return self._teachers

    def _apply(self, fn, recurse: bool = True):
        """``objective.to(device)`` moves the teachers too: they sit outside the module tree (see above)."""
        super()._apply(fn, recurse)
        for t in self._teachers:
            t._apply(fn, recurse)
        return self

    def train(self, mode: bool = True) -> DistillObjective:
        super().train(mode)
        for t in self._teachers:  # a .train() on a wrapper must never reach the teachers
            t.eval()
        return self

    @torch.no_grad()
    def teacher_forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        outs = []
        for t, forward in zip(self._teachers, self._teacher_forwards, strict=True):
            t.eval()  # re-asserted every step
            outs.append(forward(x))
        feats = self.teacher_tap.pop() if self.teacher_tap else {}
        return outs, feats

    def soft_loss(
        self, s_logits: torch.Tensor, t_logits: list[torch.Tensor], y: torch.Tensor, epoch: int
    ) -> torch.Tensor:
        return SOFT_LOSSES[self.cfg.method].fn(s_logits, t_logits, y, self.cfg, epoch)

    def _soft_term(
        self,
        student: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        s_logits: torch.Tensor,
        teacher_logits: list[torch.Tensor],
        epoch: int,
    ) -> torch.Tensor:
        """The soft term; ARD and RSLAD take it on the student's adversarial examples, the teacher on the clean image.

        RSLAD's attack maximises the student's cross-entropy to the teacher's soft labels (T=1, combined by
        ``distill.ensemble``) instead of to the hard label, and a share of its soft term stays on the clean image."""
        if self.adversary is None:
            return self.soft_loss(s_logits, teacher_logits, y, epoch)
        entry = SOFT_LOSSES[self.cfg.method]
        target = y
        if entry.attack_teacher:
            target = losses.ensemble_soft_targets([t.float() for t in teacher_logits], 1.0, self.cfg.ensemble)
        adv = self.soft_loss(student(self.adversary(student, x, target)), teacher_logits, y, epoch)
        if not entry.clean_share:
            return adv
        clean = self.soft_loss(s_logits, teacher_logits, y, epoch)
        return (1 - entry.clean_share) * adv + entry.clean_share * clean

    def feature_loss(self, i: int, s_feat: torch.Tensor, t_feat: torch.Tensor) -> torch.Tensor:
        spec = self.specs[i]
        entry = FEATURE_LOSSES[spec.kind]
        s, t = self.adapters[i](s_feat, t_feat)
        return entry.fn(s, t, **{name: getattr(spec, name) for name in entry.params})

    def forward(
        self,
        student: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        epoch: int,
        teacher_logits: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        t_feats: dict[str, torch.Tensor] = {}
        if teacher_logits is None:
            teacher_logits, t_feats = self.teacher_forward(x)
        s_logits = student(x)
        s_feats = self.student_tap.pop() if self.student_tap else {}
        terms = losses.distillation_terms(
            s_logits, y, self._soft_term(student, x, y, s_logits, teacher_logits, epoch), self.cfg.hard_weight
        )
        total = terms.total
        parts = {"hard": terms.hard.detach(), "soft": terms.soft.detach()}
        if self.specs:
            feat_total = torch.zeros((), device=total.device)
            for i, spec in enumerate(self.specs):
                feat_total = feat_total + spec.weight * self.feature_loss(
                    i, s_feats[spec.student_module], t_feats[spec.teacher_module]
                )
            total = total + feat_total
            parts["feature"] = feat_total.detach()
        return total, s_logits, parts

    def close(self) -> None:
        for tap in (self.student_tap, self.teacher_tap):
            if tap is not None:
                tap.remove()
