"""kdflow tune end to end on a real Fashion-MNIST subset: outputs, MLflow, resume after kill -9, best.yaml."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path

import optuna
import pytest
import yaml
from helpers import ROOT, tiny_config

from kdflow.infra.io import sha256_file

pytestmark = pytest.mark.e2e
KDFLOW = [sys.executable, "-m", "kdflow.cli"]


def _config_file(tmp: Path, trials: int, epochs: int, tracking: bool = False) -> Path:
    cfg = tiny_config(tmp, train={"warmup_epochs": 1, "lr": 0.05}, teacher={"epochs": 2}).to_dict()
    cfg["tracking"] = {"enabled": tracking, "uri": f"sqlite:///{tmp / 'mlflow.db'}", "experiment": "tune-test"}
    cfg["tune"] = {
        "trials": trials,
        "objectives": ["val_accuracy", "params"],
        "max_params": 40_000,
        "startup_trials": 2,
        "space": {"students": ["cnn"], "cnn_width": [4, 16], "cnn_depth": [2, 3], "epochs": [epochs, epochs]},
    }
    path = tmp / "tune.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _tune(config: Path, out: Path, *extra: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*KDFLOW, "tune", "--config", str(config), "--out", str(out), *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        **kw,
    )


def _trials(out: Path, name: str = "distill") -> list[optuna.trial.FrozenTrial]:
    s = optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'study.db'}")
    return s.get_trials(deepcopy=False)


def test_tune_writes_study_outputs_and_mlflow_runs(tmp_path, fashion_available):
    config, out = _config_file(tmp_path, trials=3, epochs=1, tracking=True), tmp_path / "study"
    done = _tune(config, out)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("trials.csv", "pareto.csv", "pareto.png", "best.yaml", "tune.json", "study.db"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader((out / "trials.csv").open()))
    distill = [r for r in rows if r["study"] == "distill"]
    scratch = [r for r in rows if r["study"] == "scratch"]
    assert len(distill) == 3 and len(scratch) == 3  # the twin gets the same number of trials
    assert all(int(r["params"]) <= 40_000 for r in distill)
    assert {r["arch"] for r in scratch} == {yaml.safe_load((out / "best.yaml").read_text())["student"]["arch"]}
    front = list(csv.DictReader((out / "pareto.csv").open()))
    completed = {(r["number"], r["val_accuracy"]) for r in distill if r["state"] == "complete"}
    assert front and all((r["number"], r["val_accuracy"]) in completed for r in front)
    assert sum(r["pick"] == "True" for r in front) == 1
    assert "KD gain" in done.stdout and ("distillation pays" in done.stdout or "did not pay" in done.stdout)
    assert "test" not in (out / "trials.csv").read_text().lower()  # the study never reads the test split
    assert json.loads((out / "teachers.json").read_text()) == [sha256_file(out / "teacher" / "model.pt")]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tune-test")
    assert exp.tags.get("mlflow.experimentKind") == "custom_model_development"
    runs = client.search_runs([exp.experiment_id], max_results=200)
    trial_runs = [r for r in runs if r.data.tags.get("kdflow.step") == "tune_trial"]
    parents = {r.data.tags["mlflow.parentRunId"] for r in trial_runs}
    assert len(trial_runs) == 6 and len(parents) == 1
    study_run = client.get_run(parents.pop())
    artifacts = {a.path for a in client.list_artifacts(study_run.info.run_id)}
    assert {"trials.csv", "pareto.csv", "pareto.png", "best.yaml"} <= artifacts
    one = trial_runs[0]
    assert "val_acc" in one.data.metrics and "global_batch" in one.data.params  # constants are params

    # a study grows: the same command with a larger --trials continues it under the same study run (it used
    # to die with MLflow's "Changing param values is not allowed": the budget was logged as a param)
    grown = _tune(config, out, "--trials", "4")
    assert grown.returncode == 0, grown.stderr[-3000:]
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert len(_trials(out)) == 4 and [r["study"] for r in rows].count("distill") == 4
    runs = client.search_runs([exp.experiment_id], max_results=200)
    assert {r.data.tags["mlflow.parentRunId"] for r in runs if r.data.tags.get("kdflow.step") == "tune_trial"} == {
        study_run.info.run_id
    }
    study_run = client.get_run(study_run.info.run_id)
    assert study_run.data.tags["kdflow.budget.tune.trials"] == "4" and "tune.trials" not in study_run.data.params

    # best.yaml is a complete config that `kdflow distill` runs as is: pick, scratch twin, evaluation
    final = subprocess.run(
        [
            *KDFLOW,
            "distill",
            "--config",
            str(out / "best.yaml"),
            "--set",
            "tracking.enabled=false",
            "--out",
            str(tmp_path / "final"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert final.returncode == 0, final.stderr[-3000:]
    assert "KD gain" in final.stdout
    assert (tmp_path / "final" / "scratch" / "model.pt").is_file()


def test_kill_9_then_the_same_command_finishes_without_rerunning(tmp_path, fashion_available):
    config, out = _config_file(tmp_path, trials=4, epochs=3), tmp_path / "study"
    proc = subprocess.Popen(
        [*KDFLOW, "tune", "--config", str(config), "--out", str(out)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,
    )

    def one_done_next_running() -> bool:
        try:
            states = [t.state for t in _trials(out)]
        except Exception:  # the study is being created, or the stopped process holds the database's lock
            return False
        return optuna.trial.TrialState.COMPLETE in states and states[-1] == optuna.trial.TrialState.RUNNING

    # The kill is timed by the tune's own epoch lines, not by polling the database: a trial of 3 epochs lasts
    # about a second, and a poll can miss every trial's running window on a fast machine (it did in CI). A line
    # "[distill trial N] epoch k/3" with N >= 1 and k < 3 means trial N runs, with an epoch to go, and one
    # before it has finished; the process is stopped at once, then looked at, then killed (or let go on).
    mid_trial = re.compile(r"\[distill trial [1-9]\d*\] epoch [12]/3 ")
    watchdog = threading.Timer(400, os.killpg, (proc.pid, signal.SIGKILL))
    watchdog.start()
    printed: deque[str] = deque(maxlen=60)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            printed.append(line)
            if not mid_trial.match(line):
                continue
            os.killpg(proc.pid, signal.SIGSTOP)
            if one_done_next_running():
                break
            os.killpg(proc.pid, signal.SIGCONT)
        else:
            pytest.fail("no trial was killed while running; the tune printed:\n" + "".join(printed))
    finally:
        watchdog.cancel()
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
    before = {t.number: (t.params, t.values) for t in _trials(out) if t.state.is_finished()}
    killed = [t.number for t in _trials(out) if t.state == optuna.trial.TrialState.RUNNING]
    assert before and killed

    again = _tune(config, out)
    assert again.returncode == 0, again.stderr[-3000:]
    trials = _trials(out)
    after = {t.number: (t.params, t.values) for t in trials if t.number in before}
    assert after == before  # finished trials kept, never re-run
    assert [t.state for t in trials if t.number in killed] == [optuna.trial.TrialState.FAIL]
    finished = [t for t in trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert len(finished) == 4 and len(trials) == 4 + len(killed)  # exactly the missing trials ran


def test_bad_input_exits_2_and_leaves_the_study_untouched(tmp_path, fashion_available, capsys):
    from kdflow.cli import main

    config, out = _config_file(tmp_path, trials=1, epochs=1), tmp_path / "study"
    assert _tune(config, out).returncode == 0
    db = (out / "study.db").read_bytes()
    (tmp_path / "x").mkdir()
    other = _config_file(tmp_path / "x", trials=1, epochs=2)
    cases = [
        (["--trials", "0"], config),
        (["--set", "tune.objectives=[val_accuracy,flops]"], config),
        (["--set", "tune.space.lr=[0.5,0.1]"], config),
        (["--set", "tune.max_params=500"], config),
        ([], other),  # a study of a different search space
    ]
    capsys.readouterr()
    for extra, cfg_path in cases:  # in this process: the CLI's own exit code and stderr (the run above is a process)
        try:
            code = main(["tune", "--config", str(cfg_path), "--out", str(out), *extra])
        except SystemExit as e:  # argparse's own usage errors
            code = e.code
        err = capsys.readouterr().err
        assert code == 2, (extra, err)
        assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("kdflow"), err
        assert (out / "study.db").read_bytes() == db
    # an extra teacher that cannot be read is refused before the data or the teacher is written
    fresh, missing = tmp_path / "fresh", "distill.extra_teachers=[{arch: cnn-wide, source: /nowhere/teacher.pt}]"
    assert main(["tune", "--config", str(config), "--out", str(fresh), "--set", missing]) == 2
    assert "distill.extra_teachers[0].source" in capsys.readouterr().err and not fresh.exists()


def test_latency_budget_is_measured_and_enforced(tmp_path, fashion_available, monkeypatch):
    """tune.max_latency_ms: a budget no student meets (1 ns) is refused before the data, the teacher or a registered
    teacher is written; a budget only some meet prunes, in the trial, each student measured over it."""
    config, out = _config_file(tmp_path, trials=2, epochs=1), tmp_path / "study"
    done = _tune(config, out, "--set", "tune.max_latency_ms=0.000001")
    assert done.returncode == 2 and "tune.max_latency_ms" in done.stderr and "the fastest" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not out.exists()

    from kdflow import tune as tuning
    from kdflow.config import load_config
    from kdflow.errors import TrainingDiverged

    # the fastest candidate meets 1 ms; every sampled student is measured at 50 ms (timings stubbed: not asserted)
    monkeypatch.setattr(tuning.cost, "onnx_latency_ms", lambda *a, **k: 0.5)
    monkeypatch.setattr(tuning.trial, "model_cost", lambda m, s, latency: {"params": 1, "macs": 1, "latency_ms": 50.0})
    with pytest.raises(TrainingDiverged, match="none of the 2 distillation trials completed"):
        tuning.tune(load_config(str(config), overrides=["tune.max_latency_ms=1.0"]), out)
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [r["state"] for r in rows] == ["pruned", "pruned"]
    assert all(r["stopped"].startswith("over budget: latency") and float(r["latency_ms"]) > 0 for r in rows)
