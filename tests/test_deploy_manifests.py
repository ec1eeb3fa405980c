"""Offline validation of what cannot run here (no Docker engine, no cluster): the image and k8s/."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from helpers import ROOT

from components.image import KDFLOW_IMAGE

pytestmark = pytest.mark.unit

K8S = ROOT / "k8s"
K8S_VERSION = "1.30.0"


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _hadolint() -> str:
    cand = Path(sys.executable).parent / "hadolint"
    return str(cand) if cand.is_file() else shutil.which("hadolint")


def test_dockerfile_lints_clean():
    proc = subprocess.run(
        [_hadolint(), str(ROOT / "docker" / "Dockerfile")], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_matches_pins_and_image_constant():
    text = (ROOT / "docker" / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11\.\d+-slim-\w+$", text, re.M), "base image pinned to an exact tag"
    assert "USER 10001" in text
    py = (ROOT / "pyproject.toml").read_text()
    installer = (ROOT / "docker" / "pip-install.sh").read_text()
    for pin in ("torch==2.14.1", "torchvision==0.29.1"):
        assert pin in installer and pin in py
    version = re.search(r'^version = "([^"]+)"', py, re.M).group(1)
    assert KDFLOW_IMAGE.endswith(":" + version) and f"KDFLOW_VERSION={version}" in text
    assert (ROOT / ".dockerignore").read_text().count(".venv")


def test_image_lock_pins_every_dependency_within_pyproject():
    """docker/requirements.lock (`make lock`) is what the image installs: it must satisfy pyproject."""
    import tomllib

    from packaging.requirements import Requirement

    lock = {}
    for line in (ROOT / "docker" / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            lock[name.lower().replace("_", "-")] = version
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in map(Requirement, deps):
        name = dep.name.lower().replace("_", "-")
        assert name in lock, f"{dep.name} missing from docker/requirements.lock: run `make lock`"
        assert dep.specifier.contains(lock[name], prereleases=True), f"{dep} vs lock {lock[name]}: run `make lock`"


def _patch_files() -> set[Path]:
    return {
        (k.parent / patch["path"]).resolve()
        for k in K8S.rglob("kustomization.yaml")
        for patch in yaml.safe_load(k.read_text()).get("patches", [])
    }


# full built-in objects: everything except kustomizations, partial patches and the custom resources in jobs/
BUILTIN = sorted(
    p
    for p in K8S.rglob("*.yaml")
    if p.name != "kustomization.yaml" and "jobs" not in p.parts and p.resolve() not in _patch_files()
)


@pytest.mark.parametrize("path", BUILTIN, ids=lambda p: str(p.relative_to(K8S)))
def test_builtin_kinds_validate_against_schema(path):
    for doc in _docs(path):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_kustomizations_reference_existing_files():
    for kfile in K8S.rglob("kustomization.yaml"):
        k = yaml.safe_load(kfile.read_text())
        for res in k.get("resources", []):
            assert (kfile.parent / res).exists(), f"{kfile}: {res}"
        for patch in k.get("patches", []):
            target = patch["target"]
            doc = _docs(kfile.parent / patch["path"])[0]
            assert doc["kind"] == target["kind"] and doc["metadata"]["name"] == target["name"]
    assert {p.parent.name for p in (K8S / "overlays").rglob("kustomization.yaml")} == {"dev", "prod"}


def _all_docs() -> list[dict]:
    return [d for p in K8S.rglob("*.yaml") for d in _docs(p)]


def test_secrets_are_templates_and_read_by_reference():
    for doc in _all_docs():
        if doc.get("kind") == "Secret":
            values = doc.get("stringData", {}) | doc.get("data", {})
            for key, value in values.items():
                if key != "MLFLOW_TRACKING_URI":  # a service address, not a credential
                    assert value == "", f"secret {doc['metadata']['name']}.{key} must be empty in git"
    text = "\n".join(p.read_text() for p in K8S.rglob("*.yaml"))
    for name in ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"):
        for m in re.finditer(rf"- name: {name}\n(\s+)(\w+)", text):
            assert m.group(2) == "valueFrom", f"{name} set by value"


def test_mlflow_deployment_hardening():
    dep = next(d for d in _docs(K8S / "base" / "mlflow.yaml") if d["kind"] == "Deployment")
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["readinessProbe"]["httpGet"]["path"] == "/health" and c["livenessProbe"]
    assert c["resources"]["limits"] and c["resources"]["requests"]
    assert any(a.startswith("--allowed-hosts=") and "svc.cluster.local" in a for a in c["args"])
    assert any(a.startswith("--artifacts-destination=s3://") for a in c["args"])


def test_training_job_templates_structure():
    tj = _docs(K8S / "jobs" / "trainjob-distill.yaml")[0]
    assert tj["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and tj["kind"] == "TrainJob"
    tr = tj["spec"]["trainer"]
    assert tr["image"] == KDFLOW_IMAGE and tr["command"][:2] == ["kdflow", "distill"] and tr["numNodes"] >= 2
    assert tj["spec"]["runtimeRef"]["name"] == "torch-distributed"
    pj = _docs(K8S / "jobs" / "pytorchjob-distill.yaml")[0]
    assert pj["apiVersion"] == "kubeflow.org/v1" and pj["kind"] == "PyTorchJob"
    specs = pj["spec"]["pytorchReplicaSpecs"]
    assert set(specs) == {"Master", "Worker"}
    for spec in specs.values():
        c = spec["template"]["spec"]["containers"][0]
        assert c["name"] == "pytorch" and c["image"] == KDFLOW_IMAGE and c["command"][0] == "torchrun"
        assert all("valueFrom" in e for e in c["env"])
