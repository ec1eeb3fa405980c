"""The data step: raw data -> prepared splits with digests and a manifest."""

from __future__ import annotations

from pathlib import Path

from kdflow.config import Config, write_resolved
from kdflow.data import prepared as data
from kdflow.infra import step_manifest
from kdflow.steps import record, results
from kdflow.steps.context import PathArg, RunContext, start_pipeline
from kdflow.steps.results import PrepResult
from kdflow.steps.timing import timed


@timed("prep_data")
def prep(cfg: Config, out_dir: PathArg, ctx: RunContext | None = None) -> PrepResult:
    from kdflow.steps.preflight import check_models

    out = Path(out_dir)
    check_models(cfg)  # an unknown architecture or feature module fails here, not steps later
    step_manifest.claim(out, "prep_data")  # a rerun starts from an empty directory, never on stale splits
    ctx = start_pipeline(cfg, ctx or RunContext())
    manifest = data.prepare(cfg.data, out, cache_dir=Path(cfg.storage.state_dir) / "sources")
    write_resolved(cfg, out)
    result: PrepResult = {
        "digest": manifest["digest"],
        "test_digest": manifest["test_digest"],
        "counts": manifest["counts"],
        "dataset": manifest["dataset"],
        "window": manifest["window"],
        "parent_run_id": ctx.parent_run_id,
        "pipeline_run_id": ctx.pipeline_run_id,
        "config_hash": cfg.digest(),
    }
    result = results.merged(result, record.prep(ctx.tracker, ctx, cfg, manifest, out))
    results.write(out, result, {"dataset": manifest["dataset"], "window": manifest["window"]})
    return result
