"""The teachers a student learnt from (``--teacher`` plus ``distill.extra_teachers``) as one model: what the
evaluate step compares the student with, so retention, agreement, the transfer rate and the gate are against the
ensemble that taught it, not its first member.

Combined by the rule distillation used (``distill.ensemble``): ``mean_probs`` averages the members' softmax and
returns it as log-probabilities (valid logits: their softmax is the averaged distribution); ``mean_logits``
averages the logits. Parameters, size, MACs and latency are the members' together: serving the ensemble runs
every member, one after the other.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

RULES = ("mean_probs", "mean_logits")


class TeacherEnsemble(nn.Module):
    def __init__(self, members: list[nn.Module], rule: str):
        super().__init__()
        if rule not in RULES:
            raise ValueError(f"unknown ensemble rule {rule!r}; use one of {RULES}")
        self.members, self.rule = nn.ModuleList(members), rule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.combine([m(x) for m in self.members])

    def combine(self, member_logits: list[torch.Tensor]) -> torch.Tensor:
        """The ensemble's logits from its members' (computed once, e.g. over a whole split)."""
        logits = torch.stack([t.float() for t in member_logits])
        if self.rule == "mean_logits":
            return logits.mean(0)
        return torch.logsumexp(F.log_softmax(logits, -1), 0) - math.log(len(member_logits))
