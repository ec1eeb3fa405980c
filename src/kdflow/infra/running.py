"""A training step's last checkpoint kept outside its output folder, so a step started again in a new one resumes.

A step resumes from ``OUT/train_state/checkpoint.pt``, but a retried pod (a lost node, an evicted or
OOM-killed step) and a rerun of the local DAG get a new, empty output folder. The step therefore keeps a copy
of that checkpoint, and of the teacher's epoch snapshots written so far, in
``<storage.state_dir>/running/<role>/<key>/``: the key is the step's fingerprint (config fields, data
content, teacher, kdflow's code), so only a step that would compute the same weights finds it, and the
checkpoint's own recorded fingerprint is checked again when it is resumed. A finished step removes its copy;
one started with ``--fresh`` removes it before training. On a cluster ``storage.state_dir`` must be a volume
the steps share (a PVC), as for reuse.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from kdflow.infra.io import atomic_copy

RUNNING = "running"


def folder(state_dir: str | Path, role: str, key: str) -> Path:
    return Path(state_dir) / RUNNING / role / key


def restore(kept: Path, out: Path, checkpoint: Path) -> bool:
    """Copy the kept checkpoint (and snapshots) into ``out`` where ``out`` has none of its own; True if copied."""
    if checkpoint.is_file() or not (kept / checkpoint.relative_to(out)).is_file():
        return False
    for path in sorted(p for p in kept.rglob("*") if p.is_file() and not p.name.endswith(".tmp")):
        atomic_copy(path, out / path.relative_to(kept))
    return True


def open_kept(state_dir: str | Path, role: str, key: str, out: Path, checkpoint: Path, fresh: bool, step: str) -> Path:
    """The step's kept folder: emptied when it starts afresh, else copied into an ``out`` without a checkpoint."""
    kept = folder(state_dir, role, key)
    if fresh:
        drop(kept)
    elif restore(kept, out, checkpoint):
        print(f"[{step}] a new output folder: continuing from the checkpoint kept in {kept}", flush=True)
    return kept


def keeper(
    kept: Path,
    out: Path,
    checkpoint: Path,
    snapshots: Callable[[Path], list[Path]],
    inner: Callable[[dict], None] | None,
) -> Callable[[dict], None]:
    """``inner`` (the step's per-epoch logger), then the epoch's checkpoint and snapshots copied to ``kept``."""

    def on_epoch(row: dict) -> None:
        if inner is not None:
            inner(row)
        for path in [checkpoint, *snapshots(out)] if checkpoint.is_file() else []:
            target = kept / path.relative_to(out)
            if path == checkpoint or not target.is_file():  # a snapshot is written once: copied once
                atomic_copy(path, target)

    return on_epoch


def drop(kept: Path) -> None:
    shutil.rmtree(kept, ignore_errors=True)


def kept_folders(state_dir: str | Path) -> list[tuple[Path, int]]:
    """Every kept folder (a step killed or still running) and its size in bytes, for ``kdflow store``."""
    root = Path(state_dir) / RUNNING
    found = sorted(p for p in root.glob("*/*") if p.is_dir()) if root.is_dir() else []
    return [(p, sum(f.stat().st_size for f in p.rglob("*") if f.is_file())) for p in found]
