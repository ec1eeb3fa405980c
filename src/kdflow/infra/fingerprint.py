"""What a trained model depends on: the config fields that change it, the data, the teacher, the code
(the package version and a digest of the source of the rooms that shape weights: training, models, data).

Stored in every training checkpoint and step result. A checkpoint whose fingerprint differs from the
run's is refused (``--fresh`` discards it), so a changed config never resumes or reuses old weights.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Any

from kdflow import __version__
from kdflow.config import Config, flatten

SECTIONS = {
    "teacher": ("data", "teacher", "train"),
    "scratch": ("data", "student", "train"),
    "distill": ("data", "student", "distill", "train"),
    "assistant": ("data", "student", "distill", "train"),
    "selftrain": ("data", "student", "distill", "train"),  # the scratch twin as its own teacher, the same recipe
    "labels_only": ("data", "student", "distill", "train"),  # the teacher on the labelled images alone
}
# Fields that never change the weights: where things are read from (the digests cover the content),
# and machine settings with no numerical effect.
IGNORED = {
    "data.source",
    "data.download_root",
    "data.storage",
    "teacher.source",
    "train.num_threads",
    "train.loader_workers",
    "train.keep_freed_memory",
    "train.collapse_patience",
    "distill.cache_dir",
    "distill.compile_teacher",
}


PACKAGE = Path(__file__).resolve().parent.parent
# The code that shapes trained weights: a change here must not resume or reuse weights the old code made.
# Evaluation, release, tracking and the CLI do not change weights, so editing them keeps models valid.
WEIGHT_SHAPING_ROOMS = ("training", "models", "data")


@lru_cache(maxsize=4)
def training_code_digest(package: Path = PACKAGE) -> str:
    """sha256 (16 hex) over the source of the rooms that shape the weights, file by file in path order."""
    h = hashlib.sha256()
    for room in WEIGHT_SHAPING_ROOMS:
        for path in sorted((package / room).rglob("*.py")):
            h.update(path.relative_to(package).as_posix().encode() + b"\0")
            h.update(path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def trains_adversarially(cfg: Config, role: str) -> bool:
    """Whether ``role`` trains on PGD examples: ARD, its scratch twin, an adversarial teacher."""
    if role == "teacher":
        return cfg.teacher.adversarial
    return cfg.distill.adversarial


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


# Move this whenever the default of an existing field of a fingerprinted section changes: fields at their
# default are left out of fingerprints, so without it a changed default would keep old weights valid.
# tests/test_fingerprint_code.py compares the defaults with tests/golden/fingerprint_defaults.json.
DEFAULTS_VERSION = 2  # 2: data.release_fraction carves the release split out of train


def _read_by_role(cfg: Config, key: str) -> bool:
    """Whether training reads ``key`` under this config: method-specific knobs count only for their method."""
    d = cfg.distill
    if key.startswith("distill.dkd_"):
        return d.method.startswith("dkd")
    if key.startswith("distill.generator."):
        return d.data_free
    if key == "distill.ensemble":
        return bool(d.extra_teachers)
    if key in ("distill.cache_views", "distill.cache_seed", "distill.cache_topk"):
        return d.cache
    section, _, name = key.partition(".")
    if section in ("teacher", "student") and name in ("finetune", "backbone_lr_mult", "finetune_layers"):
        return bool(getattr(cfg, section).pretrained)  # fine-tuning knobs matter only with pretrained weights
    if section in ("teacher", "student") and name == "weights":
        return False  # the weights count by content (<section>.weights_sha256, added by the training step)
    return True


def section_defaults(cfg: Config, section: str) -> dict[str, Any]:
    """The schema defaults of one section, flat (from the section's own class, so a field added by an upgrade
    has its default here too)."""
    return flatten({section: type(getattr(cfg, section))().model_dump(mode="json")})


def defaults_snapshot() -> dict[str, Any]:
    """DEFAULTS_VERSION and every fingerprinted section's defaults (`make golden` writes it to
    tests/golden/fingerprint_defaults.json; a test fails when a default moved and the version did not)."""
    cfg = Config()
    sections = sorted({s for roles in SECTIONS.values() for s in roles})
    return {
        "version": DEFAULTS_VERSION,
        "defaults": {k: v for s in sections for k, v in section_defaults(cfg, s).items()},
    }


def fingerprint(
    cfg: Config, role: str, data_digest: str, teacher_digest: str = "", augmentation: dict | None = None
) -> dict[str, Any]:
    """Flat ``{field: value}``: config fields of ``role``'s sections, then data, teacher and code versions.

    ``augmentation`` is the prepared data's train view (its manifest's), which training reads instead of the
    config's ``data.augment``, crop and flip fields: where the two disagree (data prepared with augmentation,
    trained under a config without, or the reverse) the view trained on joins the fingerprint as
    ``data_augmentation``, so a model is never reused for a view it was not trained on; where they agree the
    fingerprint is as it always was.

    Only fields this role's training reads, and only those away from their schema default: an upgrade that
    adds a field whose default keeps the old behaviour keeps every fingerprint (and checkpoint) valid, and a
    plain-KD student does not depend on the data-free generator's or DKD's knobs. The attack's fields count
    only for a role that trains on it (evaluation-only radii never retrain).
    """
    fields: dict[str, Any] = {}
    for section in SECTIONS[role]:
        defaults = section_defaults(cfg, section)
        for k, v in flatten({section: getattr(cfg, section).model_dump(mode="json")}).items():
            if k not in IGNORED and _read_by_role(cfg, k) and (k not in defaults or defaults[k] != v):
                fields[k] = v
    if trains_adversarially(cfg, role):
        fields.update(_training_attack(cfg))
    from kdflow.data.prepared import augmentation_spec  # here: kdflow.data imports this module's neighbours

    if augmentation is not None and augmentation != augmentation_spec(cfg.data):
        fields["data_augmentation"] = augmentation
    return {
        **fields,
        "data_digest": data_digest,
        "teacher_digest": teacher_digest,
        "kdflow_version": __version__,
        "kdflow_code": training_code_digest(),
        "kdflow_defaults": DEFAULTS_VERSION,
    }


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 20 else text[:17] + "..."


@lru_cache(maxsize=1)
def _all_defaults() -> dict[str, Any]:
    return flatten(Config().model_dump(mode="json"))


def differences(recorded: dict | None, expected: dict, shown: int = 4) -> str:
    """Each differing field, old -> new (the first ``shown``, then a count), for a refusal's one line."""
    if recorded is None:
        return "it records no fingerprint (written by an older kdflow)"
    keys = sorted(k for k in {*expected, *recorded} if recorded.get(k) != expected.get(k))
    defaults = _all_defaults()  # a field left out of a fingerprint is at its default: show that value

    def value(fp: dict, k: str) -> str:
        return _short(fp[k]) if k in fp else _short(defaults.get(k))

    text = ", ".join(f"{k} {value(recorded, k)} -> {value(expected, k)}" for k in keys[:shown])
    return text + (f" and {len(keys) - shown} more" if len(keys) > shown else "")
