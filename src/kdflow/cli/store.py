"""`kdflow store ls|gc`: what the reuse store holds (by fingerprint), and trimming it to its size cap."""

from __future__ import annotations

import shutil
import time

from kdflow.config import Config
from kdflow.errors import ConfigError


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def _running(kept: list, purge: bool) -> None:
    """The checkpoints unfinished steps keep (storage.carry_checkpoint): a killed step's stays until a run of the
    same fingerprint finishes, or until purged."""
    if not kept:
        return
    size = _mb(sum(n for _, n in kept))
    if purge:
        for path, _ in kept:
            shutil.rmtree(path, ignore_errors=True)
        print(f"removed {len(kept)} checkpoints kept by unfinished steps ({size})")
        return
    print(f"{len(kept)} checkpoints kept by unfinished steps ({size}) in {kept[0][0].parent.parent}")
    print("  (steps still running, or killed: a rerun of the same step resumes one; gc --purge-running removes them)")


def store_command(
    cfg: Config, action: str, max_gb: float | None, purge_quarantine: bool, purge_running: bool = False
) -> None:
    from kdflow.infra import reuse, running
    from kdflow.steps.train import reuse_store

    _running(running.kept_folders(cfg.storage.state_dir), action == "gc" and purge_running)

    store = reuse_store(cfg)
    quarantined = sorted((store / reuse.QUARANTINE).glob("*")) if (store / reuse.QUARANTINE).is_dir() else []
    if action == "ls":
        listed = reuse.entries(store)
        print(f"{store}: {len(listed)} entries, {_mb(sum(e.bytes for e in listed))}, least recently used first")
        print("| role | key | arch | size | last used (UTC) | trained by pipeline run |")
        print("|---|---|---|---|---|---|")
        for e in listed:
            used = time.strftime("%Y-%m-%d %H:%M", time.gmtime(e.last_used))
            run = e.source.get("pipeline_run_id", "?")
            print(f"| {e.role} | {e.path.name} | {e.arch} | {_mb(e.bytes)} | {used} | {run} |")
        for q in quarantined:
            reason = (q / "REASON.txt").read_text().strip() if (q / "REASON.txt").is_file() else "?"
            print(f"quarantined: {q.name}: {reason}")
        return
    cap = max_gb if max_gb is not None else cfg.storage.reuse_max_gb
    if cap is None:
        raise ConfigError("--max-gb", "no size cap: storage.reuse_max_gb is null", "pass --max-gb N")
    evicted = reuse.gc(store, int(cap * 1e9))
    for e in evicted:
        print(f"evicted {e.role}/{e.path.name} ({e.arch}, {_mb(e.bytes)}, last used {time.ctime(e.last_used)})")
    left = reuse.entries(store)
    print(f"{store}: {len(left)} entries, {_mb(sum(e.bytes for e in left))} (cap {cap:g} GB); evicted {len(evicted)}")
    if purge_quarantine and quarantined:
        shutil.rmtree(store / reuse.QUARANTINE)
        print(f"removed {len(quarantined)} quarantined entries")
    elif quarantined:
        print(f"{len(quarantined)} quarantined entries kept in {store / reuse.QUARANTINE} (--purge-quarantine)")
