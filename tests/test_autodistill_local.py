"""The automated-distillation DAG run by KFP's local runner on the smoke profile (real data subset)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def test_autodistill_pipeline_runs_locally(tmp_path, monkeypatch):
    import builtins

    from pipelines.runner import run_local

    real_print = builtins.print
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    summary = run_local(
        profile="smoke",
        root=str(tmp_path / "root"),
        # no robustness figures: the rounds, the pick and its twin are under test (test_adversarial: the attacks)
        overrides=[
            "gate.max_latency_p95_ms=1000",
            "export.int8_min_agreement=0.9",
            "gate.min_accuracy=0.5",
            "adversarial.evaluate=false",
            # the final rung: each study's best again in its own pod (at the search's length and data here, for
            # time; test_tune_final: on the whole train split)
            "tune.final.top_k=1",
            "tune.final.epochs=2",
            "tune.final.all_data=false",
        ],
        which="autodistill",
        rounds=1,
        parallel=2,
    )
    assert builtins.print is real_print  # KFP's local runner leaves print patched after a ParallelFor; undone
    run_dir = Path(summary["run_dir"])
    trials = list(csv.DictReader(next(run_dir.rglob("trials.csv")).open()))
    assert sorted(r["study"] for r in trials) == ["distill", "distill", "scratch", "scratch"]
    assert all(r["state"] in ("complete", "pruned") for r in trials)
    best = next(p for p in run_dir.rglob("best_config") if p.is_file()).read_text()
    pick = next(r for r in trials if r["study"] == "scratch")["arch"]
    assert f"arch: {pick}" in best and "scratch_twin:" in best
    ev = summary["evaluation"]
    assert ev["models"]["student"]["parameters"] == ev["models"]["scratch"]["parameters"]  # the pick and its twin
    assert "kd_gain_val" in ev and ev["kd_verdict"]
    tuned = json.loads(next(run_dir.rglob("tune.json")).read_text())
    assert tuned["pick"]["arch"] == pick and tuned["final_top_k"] == 1
    final = list(csv.DictReader(next(run_dir.rglob("final.csv")).open()))  # the pick and its twin: the final rung's
    assert sorted(r["study"] for r in final) == ["distill", "scratch"] and all(r["pick"] == "*" for r in final)
    assert {r["arch"] for r in final} == {pick}
    picked = next(r for r in final if r["study"] == "distill")
    assert tuned["pick"]["val_accuracy"] == pytest.approx(float(picked["final_val_accuracy"]))
    # the cost setup stated before any trial (rounds x parallel per study, as compiled) heads conclude's summary
    summaries = [p.read_text() for p in run_dir.rglob("summary") if p.is_file()]
    assert any(s.startswith("[tune] plan: 2 distillation + up to 2 scratch trials of <= ") for s in summaries)
