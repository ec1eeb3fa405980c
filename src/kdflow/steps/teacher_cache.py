"""Wiring of the offline teacher cache (``distill.cache``) into the distillation step."""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from kdflow.config import Config
from kdflow.data.prepared import PreparedData


def exact_views(prepared: PreparedData, views: int, mix: str) -> int:
    """The views a cache needs: one when every view is the same input (no augmentation, or feature rows, and no
    mixing): one teacher pass is exact; else ``views``."""
    return 1 if not prepared.manifest["augmentation"].get("enabled") and mix == "none" else views


def cache_factory(cfg: Config, teachers: list[nn.Module], teacher_sha256s: list[str]):
    """A function that builds (or reuses) the cache for the prepared data and says what it did: one cache file per
    teacher (the first is ``--teacher``, then ``distill.extra_teachers``), each keyed by its own checkpoint."""

    def build(prepared: PreparedData) -> tuple[object, dict]:
        from kdflow.data.ensemble_cache import get_or_build_all
        from kdflow.infra.allocator import keep_freed_memory
        from kdflow.models.compiled import frozen_forward
        from kdflow.training.trainer import pick_device

        if cfg.train.keep_freed_memory:
            keep_freed_memory()
        views = exact_views(prepared, cfg.distill.cache_views or max(1, cfg.epochs_for("student")), cfg.train.mix)
        cache_dir = Path(cfg.distill.cache_dir or Path(cfg.storage.state_dir) / "teacher_cache")
        device = pick_device(cfg.train.device)
        forwards = [  # built where training runs, stored on CPU
            frozen_forward(t.to(device), bool(cfg.teacher.channels_last), cfg.distill.compile_teacher) for t in teachers
        ]
        mix = {"kind": cfg.train.mix, "alpha": cfg.train.mix_alpha} if cfg.train.mix != "none" else None
        tc, paths, reused = get_or_build_all(
            forwards, teacher_sha256s, prepared, views, cfg.distill.cache_seed, cache_dir, mix, cfg.distill.cache_topk
        )
        where = ", ".join(map(str, paths))
        print(
            f"[distill_student] teacher cache {'reused' if reused else 'built'}: {where} "
            f"({tc.views} views, {tc.build_seconds:.1f}s to build)"
        )
        return tc, {
            "cache_views": tc.views,
            "cache_reused": reused,
            "cache_build_seconds": tc.build_seconds,
            "cache_bytes_per_view": tc.bytes_per_view(),
            "cache_path": str(paths[0]),  # the first teacher's; every teacher's below
            "cache_paths": [str(p) for p in paths],
        }

    return build
