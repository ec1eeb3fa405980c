"""Where the pipeline's wall time goes: each step's own seconds on the pipeline's MLflow parent run.

A step entry point wrapped in :func:`timed` logs ``step_seconds.<step>`` (its call, from the step
function's first line to its return: data loading, training, evaluation, its MLflow logging and uploads)
to the parent run. What the wall holds beyond the sum of the steps (KFP's local runner, process start,
imports, opening the tracker and the store) is the pipeline's own overhead; :func:`breakdown` computes it
and the runner logs it as ``step_seconds.pipeline_overhead``.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable
from typing import Any, TypeVar

from kdflow.config import Config
from kdflow.steps.context import RunContext

F = TypeVar("F", bound=Callable[..., Any])
PREFIX = "step_seconds."
OVERHEAD = "pipeline_overhead"
OVERHEAD_LABEL = "pipeline overhead (KFP runner, process start, imports, tracker and store)"


def timed(step: str | Callable[[inspect.BoundArguments], str]) -> Callable[[F], F]:
    """Log the wrapped step's seconds to its pipeline's parent run; a nested timed step logs nothing."""

    def wrap(fn: F) -> F:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            ctx = bound.arguments.get("ctx") or RunContext()
            bound.arguments["ctx"] = ctx
            if ctx.timing:  # the teacher step's training call, say: the outer step counts
                return fn(*bound.args, **bound.kwargs)
            ctx.timing = True
            started = time.perf_counter()
            try:
                result = fn(*bound.args, **bound.kwargs)
            finally:
                ctx.timing = False
            name = step(bound) if callable(step) else step
            log_step_seconds(ctx, name, time.perf_counter() - started)
            return result

        return inner  # type: ignore[return-value]

    return wrap


def log_step_seconds(ctx: RunContext, step: str, seconds: float) -> None:
    if ctx.tracker is not None and ctx.parent_run_id:
        ctx.tracker.log_metrics(ctx.parent_run_id, {f"{PREFIX}{step}": seconds})


def breakdown(step_seconds: dict[str, float], wall_seconds: float) -> list[tuple[str, float, float]]:
    """Rows (step, seconds, share of the wall), steps in the order given, then the overhead."""
    overhead = max(wall_seconds - sum(step_seconds.values()), 0.0)
    rows = [(s, v, v / wall_seconds if wall_seconds else 0.0) for s, v in step_seconds.items()]
    return rows + [(OVERHEAD, overhead, overhead / wall_seconds if wall_seconds else 0.0)]


# The distillation DAG's steps in the order they run (others, e.g. the tune's, follow in name order).
STEP_ORDER = [
    "prep_data",
    "train_teacher",
    "train_student_scratch",
    "distill_student",
    "transfer_baselines",
    "evaluate",
    "export",
    "register_and_promote",
]


def pipeline_breakdown(cfg: Config, pipeline_run_id: str, wall_seconds: float) -> list[tuple[str, float, float]]:
    """Read the steps' seconds from the pipeline's parent run, log the overhead and the wall there, and
    return the rows of :func:`breakdown` ([] when tracking is off or the run logged no step)."""
    from kdflow.steps.context import open_tracker

    tracker = open_tracker(cfg)
    parent = tracker.find_parent_run(pipeline_run_id) if tracker else None
    if tracker is None or parent is None:
        return []
    logged = {k.removeprefix(PREFIX): v for k, v in parent.data.metrics.items() if k.startswith(PREFIX)}
    logged.pop(OVERHEAD, None)
    if not logged:
        return []
    order = {s: i for i, s in enumerate(STEP_ORDER)}
    steps = dict(sorted(logged.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))
    rows = breakdown(steps, wall_seconds)
    tracker.log_metrics(parent.info.run_id, {f"{PREFIX}{OVERHEAD}": rows[-1][1], "pipeline_wall_seconds": wall_seconds})
    return rows


def render_breakdown(rows: list[tuple[str, float, float]], wall_seconds: float) -> str:
    lines = [f"| step | seconds | share of the wall ({wall_seconds:.0f} s) |", "|---|---|---|"]
    for step, seconds, share in rows:
        lines.append(f"| {OVERHEAD_LABEL if step == OVERHEAD else step} | {seconds:.1f} | {100 * share:.0f}% |")
    return "\n".join(lines)
