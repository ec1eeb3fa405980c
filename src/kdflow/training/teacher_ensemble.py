"""The teachers a student learnt from (``--teacher`` plus ``distill.extra_teachers``) as one model: what the
evaluate step compares the student with, so retention, agreement, the transfer rate and the gate are against the
ensemble that taught it, not its first member.

Combined by the rule distillation used (``distill.ensemble``, :func:`kdflow.training.losses.ensemble_soft_targets`
at T = 1), returned as log-probabilities: valid logits whose softmax is the ensemble's distribution. Parameters,
size, MACs and latency are the members' together: serving the ensemble runs every member, one after the other.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from kdflow.training.losses import ensemble_soft_targets


class TeacherEnsemble(nn.Module):
    def __init__(self, members: list[nn.Module], rule: str):
        super().__init__()
        self.members, self.rule = nn.ModuleList(members), rule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.combine([m(x) for m in self.members])

    def combine(self, member_logits: list[torch.Tensor]) -> torch.Tensor:
        """The ensemble's logits from its members' (computed once, e.g. over a whole split)."""
        return ensemble_soft_targets(member_logits, 1.0, self.rule).clamp_min(1e-30).log()
