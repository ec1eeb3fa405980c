"""What every step opens once: the artifact store, the MLflow tracker and the pipeline's parent run."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from kdflow.config import Config

if TYPE_CHECKING:
    from kdflow.infra.storage import LocalStore, S3Store
    from kdflow.infra.tracking import Tracker

PIPELINE_NAME = "kdflow-distillation"
PathArg = str | Path  # a step's input or output directory, as the CLI and the KFP components pass it


@dataclass
class RunContext:
    """Who is running: the pipeline run id and the MLflow parent run (None when tracking is off)."""

    pipeline_run_id: str = "local"
    parent_run_id: str | None = None
    # Opened (and checked) once by start_pipeline, then reused by the step: one S3 HEAD and one MLflow client per step.
    store: LocalStore | S3Store | None = field(default=None, repr=False, compare=False)
    tracker: Tracker | None = field(default=None, repr=False, compare=False)
    opened: bool = field(default=False, repr=False, compare=False)
    timing: bool = field(default=False, repr=False, compare=False)  # a timed step is running (steps.timing)


def storage_root(cfg: Config) -> str | None:
    return cfg.storage.root or os.environ.get("KDFLOW_STORAGE_ROOT") or None


def open_store(cfg: Config) -> LocalStore | S3Store | None:
    """The artifact store (local dir or s3://), checked before any work; None when not configured."""
    root = storage_root(cfg)
    if not root:
        return None
    from kdflow.infra import storage

    store = storage.open_store(root)
    store.check()
    return store


def open_tracker(cfg: Config) -> Tracker | None:
    if not cfg.tracking.enabled:
        return None
    from kdflow.infra import tracking

    return tracking.Tracker(cfg)


def start_pipeline(cfg: Config, ctx: RunContext, image: str = "") -> RunContext:
    """Open store and tracker (once) and get-or-create the MLflow parent run of this pipeline run.

    Every step does this, so a step whose predecessors were served from KFP's cache still lands
    under this run's parent.
    """
    if not ctx.opened:
        from kdflow.infra.cpu import fit_threads

        fit_threads(cfg.train.num_threads)  # the container's CPU quota, not the host's cores
        ctx.store = open_store(cfg)  # fails fast on bad S3 credentials, a missing bucket or a malformed URI
        ctx.tracker = open_tracker(cfg)
        ctx.opened = True
    if ctx.tracker is None or ctx.parent_run_id:
        return ctx
    from kdflow.infra.tracking import git_sha

    ctx.parent_run_id = ctx.tracker.parent_run(
        ctx.pipeline_run_id,
        {
            "kdflow.pipeline_name": PIPELINE_NAME,
            "kdflow.git_sha": git_sha(),
            "kdflow.image": image or os.environ.get("KDFLOW_IMAGE", ""),
            "kdflow.config_hash": cfg.digest(),
            "kdflow.profile": cfg.profile,
        },
    )
    return ctx


def upload(ctx: RunContext, step: str, out: Path, files: list[str] | None = None) -> str | None:
    """Copy a step's outputs to <storage root>/<pipeline run id>/<step>/ (verified); returns that URI."""
    store = ctx.store
    if store is None:
        return None
    from kdflow.infra.storage import put_dir, put_files

    prefix = f"{ctx.pipeline_run_id}/{step}"
    if files is None:
        put_dir(store, out, prefix)
    else:
        put_files(store, [(out / f, f) for f in files if (out / f).is_file()], prefix)
    return f"{store.uri.rstrip('/')}/{prefix}"
