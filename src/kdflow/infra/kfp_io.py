"""Helpers the KFP components use to copy step results into artifact metadata and Metrics."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kdflow.config import flatten

LINEAGE_KEYS = (
    "arch",
    "data_digest",
    "run_id",
    "model_id",
    "model_uri",
    "parent_run_id",
    "config_hash",
    "registered_version",
    "registered_uri",
    "source",
)


def fill_model_metadata(artifact, info: Mapping[str, Any]) -> None:
    """A step's TrainResult as KFP artifact metadata: lineage ids, teacher lineage tags and size metrics."""
    artifact.metadata.update({k: info[k] for k in LINEAGE_KEYS if info.get(k) is not None})
    artifact.metadata.update(info.get("lineage", {}))
    metrics = info.get("metrics", {})
    for k in ("parameters", "size_bytes", "macs", "test_accuracy"):
        if metrics.get(k) is not None:
            artifact.metadata[k] = metrics[k]


def log_scalar_metrics(metrics_artifact, values: dict, prefix: str = "") -> None:
    for k, v in flatten(values).items():
        if isinstance(v, int | float) and not isinstance(v, bool) and v is not None:
            metrics_artifact.log_metric(f"{prefix}{k}".replace(".", "_"), float(v))
