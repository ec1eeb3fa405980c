"""steps.timing: each step's seconds on the pipeline's parent run, nested steps counted once."""

from __future__ import annotations

import pytest

from kdflow.steps.context import RunContext
from kdflow.steps.timing import OVERHEAD, breakdown, timed

pytestmark = pytest.mark.unit


class RecordingTracker:
    def __init__(self):
        self.logged: list[tuple[str, dict]] = []

    def log_metrics(self, run_id, metrics, prefix=""):
        self.logged.append((run_id, metrics))


def _ctx() -> RunContext:
    ctx = RunContext("p1", parent_run_id="parent")
    ctx.tracker = RecordingTracker()  # type: ignore[assignment]
    return ctx


@timed(lambda b: "train_teacher" if b.arguments["role"] == "teacher" else "train_student_scratch")
def fake_train(cfg, role: str, ctx: RunContext | None = None):
    return role


@timed("train_teacher")
def fake_provide_teacher(cfg, ctx: RunContext | None = None):
    return fake_train(cfg, "teacher", ctx)  # nested: only the outer step logs


def test_named_by_role_and_nested_steps_log_once():
    ctx = _ctx()
    assert fake_provide_teacher(None, ctx=ctx) == "teacher"
    assert fake_train(None, "scratch", ctx) == "scratch"
    logged = [(run, list(m)) for run, m in ctx.tracker.logged]
    assert logged == [("parent", ["step_seconds.train_teacher"]), ("parent", ["step_seconds.train_student_scratch"])]
    assert all(v >= 0 for _, m in ctx.tracker.logged for v in m.values())
    assert ctx.timing is False


def test_a_failed_step_logs_nothing_and_resets():
    ctx = _ctx()

    @timed("evaluate")
    def boom(ctx: RunContext | None = None):
        raise ValueError("x")

    with pytest.raises(ValueError):
        boom(ctx=ctx)
    assert ctx.tracker.logged == [] and ctx.timing is False


def test_no_tracker_no_logging_and_ctx_made_when_absent():
    @timed("prep_data")
    def step(ctx: RunContext | None = None):
        return ctx

    assert isinstance(step(), RunContext)  # the wrapper hands the step the context it times


def test_breakdown_overhead_is_the_rest_of_the_wall():
    rows = breakdown({"a": 3.0, "b": 5.0}, 10.0)
    assert rows == [("a", 3.0, 0.3), ("b", 5.0, 0.5), (OVERHEAD, 2.0, pytest.approx(0.2))]
    assert breakdown({"a": 12.0}, 10.0)[-1][1] == 0.0  # never negative (clock skew between processes)
