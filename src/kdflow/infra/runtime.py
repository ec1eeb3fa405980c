"""Where a step runs: the container kind, the image, the user, the host, the threads (MLflow run tags)."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def container_kind() -> str:
    """Where this process runs: a podman or Docker container, a Kubernetes pod, or the host ("none")."""
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return "kubernetes"
    if os.environ.get("container") == "podman" or Path("/run/.containerenv").exists():
        return "podman"
    if Path("/.dockerenv").exists():
        return "docker"
    return "none"


def runtime_tags() -> dict[str, str]:
    """Each step run says where it ran: the image, the container kind, the uid (lineage; the image's user
    is 10001), the host or pod name and torch's thread count."""
    import socket

    torch = sys.modules.get("torch")  # the step has set its threads by now (infra.cpu.fit_threads)
    threads = {"kdflow.runtime.threads": str(torch.get_num_threads())} if torch is not None else {}
    return {
        "kdflow.runtime.image": os.environ.get("KDFLOW_IMAGE", ""),
        "kdflow.runtime.container": container_kind(),
        "kdflow.runtime.uid": str(os.getuid()),
        "kdflow.runtime.host": socket.gethostname(),
        **threads,
    }
