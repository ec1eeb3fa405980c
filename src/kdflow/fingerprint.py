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


def fingerprint(cfg: Config, role: str, data_digest: str, teacher_digest: str = "") -> dict[str, Any]:
    """Flat ``{field: value}``: config fields of ``role``'s sections, then data, teacher and code versions."""
    fields = {
        k: v
        for k, v in flatten({s: getattr(cfg, s).model_dump(mode="json") for s in SECTIONS[role]}).items()
        if k not in IGNORED
    }
    return {**fields, "data_digest": data_digest, "teacher_digest": teacher_digest, "kdflow_version": __version__}
