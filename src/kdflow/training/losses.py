"""Distillation losses. All of their math runs in fp32, even under autocast (see :func:`fp32`).

Convention (as in the seed formula): ``L = alpha * L_hard + (1 - alpha) * L_soft`` -- alpha weights
the HARD (cross-entropy) loss.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple, TypeVar

import torch
import torch.nn.functional as F

from kdflow.data.transfer_set import UNLABELED

F_ = TypeVar("F_", bound=Callable[..., torch.Tensor])


def fp32(fn: F_) -> F_:
    """Run ``fn`` with autocast off and its tensor arguments in fp32.

    ``.float()`` alone is not enough: autocast would still run matmul/bmm (the Gram matrices of SP,
    RKD's distances and angles) in bf16/fp16, where |a|^2 + |b|^2 - 2ab cancels badly.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        device = next((a.device.type for a in args if isinstance(a, torch.Tensor)), "cpu")
        with torch.autocast(device_type=device, enabled=False):
            return fn(
                *[a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args], **kwargs
            )

    return wrapper  # type: ignore[return-value]


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _check_alpha(alpha: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] (it weights the hard loss), got {alpha}")


@fp32
def soft_kl(student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(teacher_probs || softmax(student/T)), batchmean. teacher_probs are already at T."""
    _check_temperature(temperature)
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    return F.kl_div(log_p_s, teacher_probs.float(), reduction="batchmean") * temperature**2


def soft_targets(teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(teacher/T) in fp32: the only place teacher logits are divided by T."""
    _check_temperature(temperature)
    return F.softmax(teacher_logits.float() / temperature, dim=1)


@fp32
def kd_soft_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return soft_kl(student_logits, soft_targets(teacher_logits, temperature), temperature)


class KDTerms(NamedTuple):
    total: torch.Tensor
    hard: torch.Tensor
    soft: torch.Tensor


def distillation_terms(
    student_logits: torch.Tensor, targets: torch.Tensor, soft: torch.Tensor, alpha: float
) -> KDTerms:
    """alpha * CE(student, targets) + (1 - alpha) * soft, with both terms kept for logging.

    Targets of -1 (the unlabeled transfer set) have no hard term: CE is summed over the labelled rows and
    divided by the whole batch, so a labelled image weighs what it weighs in a fully labelled batch. (The
    mean over the labelled rows alone gave the two or three labelled images of a pooled batch 50x their
    weight, and at lr 0.1 training collapsed to chance in the second epoch.) The soft term covers every row.
    ``ignore_index`` does the masking without asking the device whether a batch has pool rows (a sync per step).
    """
    if targets.dim() == 1:  # class indices; a fully labelled batch gives the usual mean
        hard = F.cross_entropy(student_logits.float(), targets, ignore_index=UNLABELED, reduction="sum") / len(targets)
    else:  # mixed (soft) targets: every row labelled
        hard = F.cross_entropy(student_logits.float(), targets)
    return KDTerms(alpha * hard + (1.0 - alpha) * soft, hard, soft)


@fp32
def kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor, temperature: float, alpha: float
) -> torch.Tensor:
    """Hinton KD: alpha*CE(student, targets) + (1-alpha)*T^2*KL_batchmean(softmax(t/T) || softmax(s/T))."""
    _check_temperature(temperature)
    _check_alpha(alpha)
    return distillation_terms(
        student_logits, targets, kd_soft_loss(student_logits, teacher_logits, temperature), alpha
    ).total


def ensemble_soft_targets(teacher_logits: list[torch.Tensor], temperature: float, rule: str) -> torch.Tensor:
    """Several teachers -> one target distribution at temperature T.

    ``mean_probs``: average of softmax(t_i/T); ``mean_logits``: softmax(mean(t_i)/T).
    """
    if rule == "mean_probs":
        return torch.stack([soft_targets(t, temperature) for t in teacher_logits]).mean(0)
    if rule == "mean_logits":
        return soft_targets(torch.stack([t.float() for t in teacher_logits]).mean(0), temperature)
    raise ValueError(f"unknown ensemble rule {rule!r}; use mean_probs or mean_logits")


@fp32
def dkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    alpha: float = 1.0,
    beta: float = 8.0,
) -> torch.Tensor:
    """Decoupled KD (Zhao et al., 2022): alpha*TCKD + beta*NCKD, each scaled by T^2, batchmean."""
    _check_temperature(temperature)
    s, t = student_logits.float(), teacher_logits.float()
    gt = F.one_hot(targets, s.shape[1]).bool()
    p_s = F.softmax(s / temperature, dim=1)
    p_t = F.softmax(t / temperature, dim=1)
    # target-class binary distributions [p_gt, 1 - p_gt]
    b_s = torch.stack([(p_s * gt).sum(1), (p_s * ~gt).sum(1)], dim=1).clamp_min(1e-12)
    b_t = torch.stack([(p_t * gt).sum(1), (p_t * ~gt).sum(1)], dim=1).clamp_min(1e-12)
    tckd = (b_t * (b_t.log() - b_s.log())).sum(1).mean() * temperature**2
    # non-target distributions: mask the ground-truth logit out with a large negative value
    log_q_s = F.log_softmax(s / temperature - 1000.0 * gt, dim=1)
    q_t = F.softmax(t / temperature - 1000.0 * gt, dim=1)
    nckd = F.kl_div(log_q_s, q_t, reduction="batchmean") * temperature**2
    return alpha * tckd + beta * nckd


@fp32
def fitnets_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
    """FitNets hint loss: MSE between the adapted student feature and the teacher feature."""
    return F.mse_loss(student_feat.float(), teacher_feat.float())


def attention_kl_loss(student_attn: torch.Tensor, teacher_attn: torch.Tensor) -> torch.Tensor:
    """TinyBERT-style attention transfer between Transformers (batch x heads x L x L distributions): the KL
    divergence from the teacher's distribution of each text position to the student's (as MiniLM, Wang et al.
    2020), per head when both have as many heads, else of the heads' mean. Padded positions carry no
    attention in the teacher's map (their column is zero), so their rows are left out."""
    s, t = student_attn.float(), teacher_attn.float()
    if s.shape[1] != t.shape[1]:
        s, t = s.mean(1, keepdim=True), t.mean(1, keepdim=True)
    text = t.sum(dim=(1, 2)) > 0  # batch x L: the positions any query attends to
    kl = (t * (t.clamp_min(1e-12).log() - s.clamp_min(1e-12).log())).sum(-1).mean(1)  # batch x L (rows)
    return (kl * text).sum() / text.sum().clamp_min(1)


def attention_map(feat: torch.Tensor) -> torch.Tensor:
    """Zagoruyko & Komodakis: L2-normalised spatial map of the channel mean of squared activations."""
    return F.normalize(feat.float().pow(2).mean(1).flatten(1), dim=1)


@fp32
def at_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
    return (attention_map(student_feat) - attention_map(teacher_feat)).pow(2).mean()


def _pairwise_distances(e: torch.Tensor) -> torch.Tensor:
    sq = e.pow(2).sum(1)
    d = (sq[:, None] + sq[None, :] - 2 * e @ e.t()).clamp_min(1e-12).sqrt()
    return d * (1 - torch.eye(len(e), device=e.device, dtype=e.dtype))


@fp32
def rkd_distance_loss(student_emb: torch.Tensor, teacher_emb: torch.Tensor) -> torch.Tensor:
    s, t = student_emb.float().flatten(1), teacher_emb.float().flatten(1)
    with torch.no_grad():
        td = _pairwise_distances(t)
        td = td / td[td > 0].mean()
    sd = _pairwise_distances(s)
    sd = sd / sd[sd > 0].mean()
    return F.smooth_l1_loss(sd, td)


@fp32
def rkd_angle_loss(student_emb: torch.Tensor, teacher_emb: torch.Tensor) -> torch.Tensor:
    s, t = student_emb.float().flatten(1), teacher_emb.float().flatten(1)
    with torch.no_grad():
        tv = F.normalize(t.unsqueeze(0) - t.unsqueeze(1), p=2, dim=2)
        t_angle = torch.bmm(tv, tv.transpose(1, 2)).flatten()
    sv = F.normalize(s.unsqueeze(0) - s.unsqueeze(1), p=2, dim=2)
    s_angle = torch.bmm(sv, sv.transpose(1, 2)).flatten()
    return F.smooth_l1_loss(s_angle, t_angle)


@fp32
def rkd_loss(
    student_emb: torch.Tensor, teacher_emb: torch.Tensor, distance_weight: float = 25.0, angle_weight: float = 50.0
) -> torch.Tensor:
    """Relational KD (Park et al.): weighted distance and angle terms."""
    return distance_weight * rkd_distance_loss(student_emb, teacher_emb) + angle_weight * rkd_angle_loss(
        student_emb, teacher_emb
    )


@fp32
def sp_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
    """Similarity-preserving KD (Tung & Mori): ||norm(G_s) - norm(G_t)||_F^2 / b^2."""
    s, t = student_feat.float().flatten(1), teacher_feat.float().flatten(1)
    gs = F.normalize(s @ s.t(), p=2, dim=1)
    gt = F.normalize(t @ t.t(), p=2, dim=1)
    b = s.shape[0]
    return (gs - gt).pow(2).sum() / (b * b)
