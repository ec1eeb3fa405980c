"""MLflow logging of a tune: the study's run (tables and plot as artifacts) and one child run per trial."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kdflow.config import Config
from kdflow.infra.tracking import Tracker
from kdflow.tune.study import BUDGET_KEYS

STUDY_STEP = "tune"


class TrialRecorder:
    """No-op without a tracker; otherwise trials are child runs of the study's run."""

    def __init__(self, tracker: Tracker | None, study_run_id: str | None, rung: str = ""):
        self.tracker = tracker
        self.study_run_id = study_run_id
        self.rung = rung  # "final": the final rung's runs of a trial, apart from its search run
        self._runs: dict[int, str] = {}

    @contextlib.contextmanager
    def trial_run(self, trial, kind: str, cfg: Config, recipe: dict[str, Any]) -> Iterator[Callable[[dict], None]]:
        if self.tracker is None:
            yield lambda row: None
            return
        client = self.tracker.client
        run = client.create_run(
            self.tracker.experiment_id,
            run_name=f"{kind}-trial-{trial.number}" + (f"-{self.rung}" if self.rung else ""),
            tags={
                "mlflow.parentRunId": self.study_run_id or "",
                "kdflow.step": f"{STUDY_STEP}_trial",
                "kdflow.study": kind,
                "kdflow.trial": str(trial.number),
                "kdflow.arch": cfg.student.arch,
                **({"kdflow.rung": self.rung} if self.rung else {}),
            },
        )
        run_id = run.info.run_id
        self._runs[trial.number] = run_id
        self.tracker._log_params_once(run_id, {"arch": cfg.student.arch, **recipe, **trial.params})
        status = "FINISHED"
        try:
            yield lambda row: self.tracker.log_history(run_id, [row]) if self.tracker else None
        except BaseException as e:
            stopped = trial.user_attrs.get("stopped")
            status = "KILLED" if stopped else "FAILED"
            client.set_tag(run_id, "kdflow.trial_state", "pruned" if stopped else "failed")
            if stopped:
                client.set_tag(run_id, "kdflow.stopped", stopped[:250])
            raise e
        finally:
            wall = trial.user_attrs.get("wall_s")
            if wall is not None:
                self.tracker.log_metrics(run_id, {"wall_s": wall})
            client.set_terminated(run_id, status)

    def finish(self, trial, val_accuracy: float, cost: dict[str, float]) -> None:
        if self.tracker is None or trial.number not in self._runs:
            return
        run_id = self._runs[trial.number]
        self.tracker.log_metrics(run_id, {"val_accuracy": val_accuracy, **cost})
        self.tracker.client.set_tag(run_id, "kdflow.trial_state", "complete")


def study_run(tracker: Tracker | None, study_key: str, cfg: Config) -> str | None:
    """Get or create the study's run (idempotent: a resumed tune logs under the same run)."""
    if tracker is None:
        return None
    run_id = tracker.parent_run(
        f"tune-{study_key}",
        {"kdflow.kind": STUDY_STEP, "kdflow.config_hash": cfg.digest(), "kdflow.profile": cfg.profile},
    )
    tracker.log_config(run_id, cfg, budget=frozenset(BUDGET_KEYS))  # a larger --trials continues the study
    return run_id


def study_outputs(tracker: Tracker | None, run_id: str | None, out: Path, summary: dict[str, Any]) -> None:
    if tracker is None or run_id is None:
        return
    for name in ("trials.csv", "pareto.csv", "pareto.png", "best.yaml", "tune.json"):
        if (out / name).is_file():
            tracker.log_artifact(run_id, out / name)
    tracker.log_metrics(run_id, {k: v for k, v in summary.items() if isinstance(v, int | float) and v is not None})
