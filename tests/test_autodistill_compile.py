"""The automated-distillation pipeline compiles offline to its committed YAML, with bounded parallel trials."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from components.image import KDFLOW_IMAGE
from pipelines.autodistill import PARALLEL, ROUNDS
from pipelines.runner import compile_pipeline

pytestmark = pytest.mark.unit
GOLDEN = Path(__file__).resolve().parent.parent / "pipelines" / "kdflow_autodistill.yaml"


@pytest.fixture(scope="module")
def ir(tmp_path_factory) -> dict:
    out = compile_pipeline(tmp_path_factory.mktemp("ir") / "a.yaml", which="autodistill")
    return list(yaml.safe_load_all(out.read_text()))[0]


def test_matches_golden(ir):
    golden = list(yaml.safe_load_all(GOLDEN.read_text()))[0]
    for doc in (golden, ir):
        doc.pop("sdkVersion", None)
    assert ir == golden, "pipeline changed: run `make golden` and review the diff"


def test_a_failed_run_is_closed_by_the_exit_handler(ir):
    root = ir["root"]["dag"]["tasks"]
    assert set(root) == {"exit-handler-1", "finalize"}
    assert root["finalize"]["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert root["finalize"]["dependentTasks"] == ["exit-handler-1"]
    assert "status" in root["finalize"]["inputs"]["parameters"]


def test_rounds_of_parallel_trials_feed_the_pick(ir):
    tasks = ir["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    loops = {n: t for n, t in tasks.items() if n.startswith("for-loop")}
    assert len(loops) == 2 * ROUNDS  # distillation rounds, then the scratch twin's rounds
    for task in loops.values():
        assert task["parameterIterator"]["items"]["inputParameter"]
        body = ir["components"][task["componentRef"]["name"]]["dag"]["tasks"]
        assert [n.startswith("tune-trial") for n in body] == [True]
        assert task["iteratorPolicy"]["parallelismLimit"] == PARALLEL
    deps = {n: set(t.get("dependentTasks", [])) for n, t in tasks.items()}
    assert "train-teacher" in deps["tune-setup"]
    assert deps["train-teacher"] == {"prep-data", "tune-check"}  # a budget no student meets fails before the teacher
    assert deps["tune-check"] == {"prep-data"}
    assert any(d.startswith("tune-tell") for d in deps["tune-conclude"])
    assert "tune-conclude" in deps["distill-student"] and "tune-conclude" in deps["train-student-scratch"]
    assert "export" in str(tasks) and any(n.startswith("condition") for n in tasks)


def test_every_step_runs_the_pinned_image(ir):
    images = {e["container"]["image"] for e in ir["deploymentSpec"]["executors"].values()}
    assert images == {KDFLOW_IMAGE}


def test_a_final_rung_compiled_in_retrains_each_studys_best_and_feeds_the_students(tmp_path):
    out = compile_pipeline(tmp_path / "f.yaml", which="autodistill", rounds=1, parallel=2, final_top_k=3)
    ir = list(yaml.safe_load_all(out.read_text()))[0]
    tasks = ir["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    asks = {n: t["inputs"]["parameters"] for n, t in tasks.items() if n.startswith("tune-ask")}
    finals = sorted(p["kind"]["runtimeValue"]["constant"] for p in asks.values() if "rung" in p)
    assert finals == ["distill", "scratch"]  # one final rung per study, after its rounds
    limits = sorted(t["iteratorPolicy"]["parallelismLimit"] for n, t in tasks.items() if n.startswith("for-loop"))
    assert limits == [2, 2, 3, 3]  # the rounds' pods, then the final rung's k pods at once
    assert tasks["tune-check"]["inputs"]["parameters"]["final_top_k"]["runtimeValue"]["constant"] == 3
    for student in ("distill-student", "train-student-scratch"):  # trained on the final rung's data
        source = tasks[student]["inputs"]["artifacts"]["dataset"]["taskOutputArtifact"]
        assert source == {"outputArtifactKey": "final_dataset", "producerTask": "tune-setup"}
