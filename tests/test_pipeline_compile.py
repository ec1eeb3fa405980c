"""The compiled IR against the committed golden YAML (regenerate with `make golden`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from components.image import KDFLOW_IMAGE
from pipelines.runner import compile_pipeline

pytestmark = pytest.mark.unit

# The one committed compiled pipeline: what users upload, and the golden copy this test compares against.
GOLDEN = Path(__file__).resolve().parent.parent / "pipelines" / "kdflow_distillation.yaml"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict:
    out = compile_pipeline(tmp_path_factory.mktemp("ir") / "p.yaml")
    docs = list(yaml.safe_load_all(out.read_text()))
    return {"text": out.read_text(), "ir": docs[0], "platform": docs[1] if len(docs) > 1 else {}}


def test_matches_golden(compiled):
    golden = list(yaml.safe_load_all(GOLDEN.read_text()))
    fresh = [compiled["ir"], compiled["platform"]]
    for doc in (*golden, *fresh):
        doc.pop("sdkVersion", None) if isinstance(doc, dict) else None
    assert fresh == golden, "pipeline changed: run `make golden` and review the diff"


def _tasks(ir: dict) -> dict:
    return ir["root"]["dag"]["tasks"]


def _inner(ir: dict) -> dict:
    return ir["components"]["comp-exit-handler-1"]["dag"]["tasks"]


def _condition(ir: dict) -> str:
    names = [n for n in _inner(ir) if n.startswith("condition-")]
    assert len(names) == 1
    return names[0]


def test_dag_edges(compiled):
    inner = _inner(compiled["ir"])
    deps = {name: set(t.get("dependentTasks", [])) for name, t in inner.items()}
    assert deps["prep-data"] == set()
    assert deps["train-teacher"] == {"prep-data"}
    assert deps["train-student-scratch"] == {"prep-data"}
    assert deps["distill-student"] == {"prep-data", "train-teacher"}
    assert deps["train-transfer-baselines"] == {"prep-data", "train-teacher", "train-student-scratch"}
    assert deps["evaluate"] == {
        "prep-data",
        "train-teacher",
        "train-student-scratch",
        "distill-student",
        "train-transfer-baselines",
    }
    assert deps["export"] == {"prep-data", "distill-student", "evaluate"}
    assert "export" in inner[_condition(compiled["ir"])]["dependentTasks"]


def test_if_gate_and_exit_handler(compiled):
    ir = compiled["ir"]
    root = _tasks(ir)
    assert root["finalize"]["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert root["finalize"]["dependentTasks"] == ["exit-handler-1"]
    name = _condition(ir)
    cond = _inner(ir)[name]["triggerPolicy"]["condition"]
    assert "export" in cond and "true" in cond
    assert "register-and-promote" in ir["components"][f"comp-{name}"]["dag"]["tasks"]


def test_pinned_image_everywhere(compiled):
    execs = compiled["ir"]["deploymentSpec"]["executors"]
    assert len(execs) == 9
    assert {e["container"]["image"] for e in execs.values()} == {KDFLOW_IMAGE}
    assert ":latest" not in KDFLOW_IMAGE


def test_caching_per_task(compiled):
    inner = _inner(compiled["ir"])
    cache = {
        n: t.get("cachingOptions", {}).get("enableCache", False)
        for n, t in inner.items()
        if not n.startswith("condition-")
    }
    assert cache == {
        "prep-data": True,
        "train-teacher": True,
        "train-student-scratch": False,
        "distill-student": False,
        "train-transfer-baselines": False,
        "evaluate": False,
        "export": False,
    }
    promo = compiled["ir"]["components"][f"comp-{_condition(compiled['ir'])}"]["dag"]["tasks"]["register-and-promote"]
    assert not promo.get("cachingOptions", {}).get("enableCache", False)


def test_resources_retries_and_secrets(compiled):
    ir, platform = compiled["ir"], compiled["platform"]
    execs = ir["deploymentSpec"]["executors"]
    for e in execs.values():
        res = e["container"]["resources"]
        assert res["cpuRequest"] > 0 and res["cpuLimit"] >= res["cpuRequest"]
        assert res["memoryRequest"] > 0 and res["memoryLimit"] >= res["memoryRequest"]
    inner = _inner(ir)
    for t in ("train-teacher", "train-student-scratch", "distill-student", "train-transfer-baselines"):
        assert inner[t]["retryPolicy"]["maxRetryCount"] == 2
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name, spec in k8s.items():
        secrets = {s["secretName"] for s in spec.get("secretAsEnv", [])}
        assert secrets == {"kdflow-s3", "kdflow-tracking"}, name
    train = k8s["exec-train-teacher"]
    assert train["emptyDirMounts"][0]["mountPath"] == "/dev/shm"


def test_no_credentials_in_yaml(compiled):
    text = compiled["text"].lower()
    for needle in ("aws_secret_access_key: ", "password", "secret_key=", "minioadmin"):
        assert needle not in text


def test_gpu_variant_requests_accelerator(tmp_path):
    ir = yaml.safe_load_all(compile_pipeline(tmp_path / "gpu.yaml", use_gpu=True).read_text())
    execs = next(ir)["deploymentSpec"]["executors"]
    acc = execs["exec-distill-student"]["container"]["resources"]["accelerator"]
    assert acc["resourceType"] == "nvidia.com/gpu" and acc["resourceCount"] == "1"
