"""What a trained model depends on: the config fields that change it, the data, the teacher, the code.

Stored in every training checkpoint and step result. A checkpoint whose fingerprint differs from the
run's is refused (``--fresh`` discards it), so a changed config never resumes or reuses old weights.
"""

from __future__ import annotations

from typing import Any

from kdflow import __version__
from kdflow.config import Config, flatten

SECTIONS = {
    "teacher": ("data", "teacher", "train"),
    "scratch": ("data", "student", "train"),
    "distill": ("data", "student", "distill", "train"),
    "assistant": ("data", "student", "distill", "train"),
}
# Fields that never change the weights: where things are read from (the digests cover the content),
# and machine settings with no numerical effect.
IGNORED = {
    "data.source",
    "data.download_root",
    "teacher.source",
    "train.num_threads",
    "train.keep_freed_memory",
    "train.collapse_patience",
    "distill.cache_dir",
    "distill.compile_teacher",
}


def trains_adversarially(cfg: Config, role: str) -> bool:
    """Whether ``role`` trains on PGD examples: ARD, its scratch twin, an adversarial teacher."""
    if role == "teacher":
        return cfg.teacher.adversarial
    return cfg.distill.method == "ard"


def _training_attack(cfg: Config) -> dict[str, Any]:
    a = cfg.adversarial
    eps = a.training_eps
    return {
        "adversarial.train_eps": eps,
        "adversarial.train_steps": a.train_steps,
        "adversarial.train_step_size": a.pgd_step(eps, a.train_steps),
        "adversarial.random_start": a.random_start,
        "adversarial.seed": a.seed,
    }


def fingerprint(cfg: Config, role: str, data_digest: str, teacher_digest: str = "") -> dict[str, Any]:
    """Flat ``{field: value}``: config fields of ``role``'s sections, then data, teacher and code versions.

    The attack's fields count only for a role that trains on it (evaluation-only radii never retrain).
    """
    fields = {
        k: v
        for k, v in flatten({s: getattr(cfg, s).model_dump(mode="json") for s in SECTIONS[role]}).items()
        if k not in IGNORED
    }
    if trains_adversarially(cfg, role):
        fields.update(_training_attack(cfg))
    return {**fields, "data_digest": data_digest, "teacher_digest": teacher_digest, "kdflow_version": __version__}
