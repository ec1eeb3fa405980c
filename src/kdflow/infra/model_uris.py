"""Models named by an MLflow URI (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``runs:/...``) fetched
to local files: a registry teacher, the champion a promotion compares with, a registered ONNX model to serve."""

from __future__ import annotations

import tempfile
from pathlib import Path

from kdflow.errors import TrackingError
from kdflow.infra.tracking import check_reachable

_DOWNLOADS: tempfile.TemporaryDirectory | None = None


def _download_dir() -> Path:
    """A fresh folder in this process's download folder, which goes when the process exits (MLflow's default,
    a new mkdtemp per download, is never removed: every promotion left its champion's model in /tmp)."""
    global _DOWNLOADS
    if _DOWNLOADS is None:
        _DOWNLOADS = tempfile.TemporaryDirectory(prefix="kdflow-models-")
    return Path(tempfile.mkdtemp(dir=_DOWNLOADS.name))


def download_model(uri: str, field: str) -> Path:
    """A models:/ or runs:/ URI downloaded to a local directory; any failure is one line naming ``field``.

    A server that does not answer fails in seconds: MLflow's own client retries a refused connection with
    backoff for about four minutes."""
    import mlflow.artifacts

    try:
        check_reachable(mlflow.get_tracking_uri())
    except TrackingError as e:
        raise TrackingError(field, f"cannot fetch '{uri}': {e.problem}", e.fix) from None
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(_download_dir())))
    except Exception as e:  # noqa: BLE001 - MlflowException and HTTP errors
        problem = f"cannot fetch '{uri}' ({type(e).__name__}: {str(e)[:100]})"
        raise TrackingError(
            field, problem, "check the name/alias in the MLflow registry and the tracking URI"
        ) from None


def resolve_model_uri(uri: str) -> Path:
    """models:/... or runs:/... -> the local path of the kdflow checkpoint logged with that model."""
    local = download_model(uri, "teacher.source")
    found = sorted(local.rglob("model.pt"))
    if not found:
        raise TrackingError(
            "teacher.source",
            f"'{uri}' holds no kdflow checkpoint (model.pt)",
            "use a model logged by a kdflow training step",
        )
    return found[0]
