"""The whole DAG (KFP's local runner) on the datasets of named inputs (#27), each experiment YAML embedded in the
run (``--config``): the multiview digits (a fusion teacher on six views, a student on one, the transfer set
beside the self-training twin and the labels-only distilled student) and the WordNet glosses (the MiniLM
teacher into a text student exported with its tokenizer); evaluated, exported, gated and promoted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parent.parent


def _run(tmp_path: Path, monkeypatch, config: str, *extra: str) -> dict:
    """The DAG at the smoke profile of configs/``config``, its own sqlite MLflow; lenient gate thresholds."""
    from pipelines.runner import run_local

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    lenient = ["train.num_threads=1", "gate.min_accuracy=0", "gate.min_retention=0", "gate.max_latency_p95_ms=1000"]
    return run_local(
        profile="smoke",
        root=str(tmp_path / "root"),
        overrides=[*lenient, *extra],
        config=str(ROOT / "configs" / config),
    )


def test_the_dag_distils_six_views_into_one(tmp_path, monkeypatch):
    out = _run(tmp_path, monkeypatch, "multiview_digits.yaml")
    ev, ex, run_dir = out["evaluation"], out["export"], Path(out["run_dir"])
    assert set(ev["models"]) == {"teacher", "student", "scratch", "selftrain", "labels_only"}  # the transfer set's rows
    assert ev["class_names"] == [str(i) for i in range(10)] and "p_value" in ev["vs_selftrain_release_mcnemar"]
    assert "self-training twin" in Path(out["report"]).read_text()
    assert "pgd_accuracy" not in ev["models"]["student"]  # pixel attacks are not run on feature rows
    assert ex["parity_ok"] and out["promotion"]["promoted"]
    manifest = json.loads(next(run_dir.rglob("student.int8.onnx.manifest.json")).read_text())
    assert manifest["input_shape"] == ["batch", 76] and manifest["inputs"] == ["view:fou"]
    results = [json.loads(p.read_text()) for p in run_dir.rglob("step.json")]
    (distill,) = [r for r in results if r.get("role") == "distill"]
    (prepared,) = [json.loads(p.read_text()) for p in run_dir.rglob("manifest.json") if p.parent.name != "exported"]
    assert distill["lineage"]["kdflow.transfer_set"] == str(prepared["counts"]["unlabeled"])  # the pool was read


def test_the_dag_distils_a_language_model_into_a_text_student(tmp_path, monkeypatch):
    """The same DAG on configs/wordnet_supersense.yaml: the MiniLM view at prep, the text student exported with
    its tokenizer."""
    lenient_int8 = ["export.int8_min_agreement=0", "export.int8_max_accuracy_drop=1"]  # not what this checks
    out = _run(tmp_path, monkeypatch, "wordnet_supersense.yaml", *lenient_int8)
    ev, ex, run_dir = out["evaluation"], out["export"], Path(out["run_dir"])
    assert set(ev["models"]) == {"teacher", "student", "scratch", "selftrain", "labels_only"}
    assert ex["parity_ok"] and out["promotion"]["promoted"]
    manifest = json.loads(next(run_dir.rglob("student.onnx.manifest.json")).read_text())
    assert (
        manifest["inputs"] == ["tokens"] and (next(run_dir.rglob("student.onnx")).parent / "tokenizer.json").is_file()
    )
