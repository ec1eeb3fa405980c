"""Offline KD from several teachers (``distill.extra_teachers`` with ``distill.cache``): one cache per teacher.

Each teacher keeps its own cache file, keyed by its own checkpoint's sha256 (a teacher cached for a single-teacher
run is reused as it is), over the same seeded views: the view parameters and mixing partners are pure functions of
(seed, view), so every member replays the very images the others saw. At each step the trainer reads every
teacher's raw logits for the batch, and the soft loss combines them by ``distill.ensemble`` exactly as it does
for the live teachers: an ensemble costs one student epoch, not one forward of every teacher per epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from kdflow.data.cache import TeacherCache, get_or_build
from kdflow.data.mixing import MixParams
from kdflow.data.prepared import PreparedData
from kdflow.errors import ConfigError


@dataclass
class EnsembleCache:
    """The caches of several teachers over the same views, read as one (the trainer's interface)."""

    members: list[TeacherCache]

    def __post_init__(self) -> None:
        first = self.members[0]
        for i, m in enumerate(self.members[1:], start=1):
            same_mix = (m.mix is None) == (first.mix is None) and all(
                torch.equal(a.partner, b.partner) and torch.equal(a.lam, b.lam) and torch.equal(a.box, b.box)
                for a, b in zip(m.mix or [], first.mix or [], strict=True)
            )
            if not torch.equal(m.params, first.params) or not same_mix:
                raise ConfigError(
                    "distill.extra_teachers",
                    f"the cache of teacher {i} replays other views than the first teacher's",
                    "delete the teacher caches (distill.cache_dir) and let kdflow rebuild them",
                )

    @property
    def views(self) -> int:
        return self.members[0].views

    @property
    def build_seconds(self) -> float:
        return sum(m.build_seconds for m in self.members)

    def bytes_per_view(self) -> float:
        return sum(m.bytes_per_view() for m in self.members)

    def params_for_epoch(self, epoch: int) -> torch.Tensor:
        return self.members[0].params_for_epoch(epoch)

    def mix_for_epoch(self, epoch: int) -> MixParams | None:
        return self.members[0].mix_for_epoch(epoch)

    def teacher_logits(self, indices: torch.Tensor, epoch: int) -> list[torch.Tensor]:
        """Every teacher's raw logits for these samples at this epoch's view, the first teacher first."""
        return [m.logits_for(indices, epoch) for m in self.members]


def get_or_build_all(
    forwards: Sequence[nn.Module],
    shas: Sequence[str],
    data: PreparedData,
    views: int,
    seed: int,
    cache_dir: Path,
    mix: dict | None = None,
    topk: int | None = None,
) -> tuple[TeacherCache | EnsembleCache, list[Path], bool]:
    """Each teacher's cache reused or built (one file each); one teacher gives its plain cache.

    Returns (cache, paths, every one reused)."""
    built = [
        get_or_build(f, sha, data, views, seed, cache_dir, mix, topk) for f, sha in zip(forwards, shas, strict=True)
    ]
    caches, paths, reused = [b[0] for b in built], [b[1] for b in built], all(b[2] for b in built)
    return (caches[0] if len(caches) == 1 else EnsembleCache(caches)), paths, reused
