"""What the benches that run kdflow's own steps share: runs isolated from the user's state, and seed lists."""

from __future__ import annotations

from pathlib import Path


def isolated(work: Path) -> list[str]:
    """Overrides for a bench's steps: no MLflow, no model reuse, state in the bench's own folder."""
    return ["tracking.enabled=false", "storage.reuse=false", f"storage.state_dir={work / 'state'}"]


def seed_list(text: str) -> list[int]:
    """``--seeds 0,1,2``."""
    return [int(x) for x in text.split(",")]
