"""Model checkpoints: architecture + weights only, loadable with ``weights_only=True``.

A teacher ``source`` may be a local path or a URI: ``s3://`` (storage), ``models:/`` and ``runs:/``
(tracking). Their handlers are registered here, with the layer imported only when such a URI is
resolved; :func:`register_model_resolver` adds others.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch.nn as nn

from kdflow.errors import CheckpointError, ModelError
from kdflow.infra.io import atomic_torch_save, safe_torch_load
from kdflow.models.inputs import Selected, build_selected
from kdflow.models.zoo import build_model

_MODEL_RESOLVERS: dict[str, Callable[[str], Path]] = {}


def register_model_resolver(scheme: str, resolver: Callable[[str], Path]) -> None:
    _MODEL_RESOLVERS[scheme] = resolver


def _s3_model(uri: str) -> Path:
    from kdflow.infra.storage import s3_model_resolver

    return s3_model_resolver(uri)


def _mlflow_model(uri: str) -> Path:
    from kdflow.infra.model_uris import resolve_model_uri

    return resolve_model_uri(uri)


for _scheme, _resolver in (("s3", _s3_model), ("models", _mlflow_model), ("runs", _mlflow_model)):
    register_model_resolver(_scheme, _resolver)


def save_model(
    model: nn.Module,
    arch: str,
    num_classes: int,
    in_channels: int,
    image_size: int,
    path: str | Path,
    extra: dict | None = None,
) -> Path:
    blob = {
        "format": "kdflow-model-v1",
        "arch": arch,
        "num_classes": num_classes,
        "in_channels": in_channels,
        "image_size": image_size,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": extra or {},
    }
    if isinstance(model, Selected):  # a model on named inputs: which columns it reads, to rebuild it
        blob["inputs"] = model.spec()
    return atomic_torch_save(blob, path)


_RESOLVED: dict[tuple[str, str], Path] = {}


def _where(scheme: str) -> str:
    """Which server a URI is resolved against: the same URI on another tracking server is another model."""
    if scheme in ("models", "runs"):
        import mlflow

        return mlflow.get_tracking_uri()
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""


def resolve_source(source: str, field: str) -> Path:
    """A local path for ``source``. A URI is downloaded once per process: the teacher that was checked,
    digested and cached is the one that trains (an alias that moves meanwhile does not change it)."""
    if "://" in source or source.startswith("models:/") or source.startswith("runs:/"):
        scheme = source.split(":", 1)[0]
        if scheme not in _MODEL_RESOLVERS:
            raise CheckpointError(
                field,
                f"cannot resolve '{source}' (no handler for {scheme})",
                "use a local checkpoint path, an s3:// URI or a models:/ URI",
            )
        key = (source, _where(scheme))
        if key not in _RESOLVED or not _RESOLVED[key].is_file():
            _RESOLVED[key] = _MODEL_RESOLVERS[scheme](source)
        return _RESOLVED[key]
    return Path(source)


def load_model(
    source: str | Path, field: str = "checkpoint", expect_classes: int | None = None
) -> tuple[nn.Module, dict]:
    """Load a kdflow model checkpoint; returns (model in eval mode, metadata)."""
    path = resolve_source(str(source), field)
    blob = safe_torch_load(path, field)
    if not isinstance(blob, dict) or blob.get("format") != "kdflow-model-v1" or "state_dict" not in blob:
        raise CheckpointError(
            field,
            f"'{path}' is not a kdflow model checkpoint (no format/arch/state_dict)",
            "pass a model.pt written by a kdflow training step",
        )
    if expect_classes is not None and blob["num_classes"] != expect_classes:
        raise ModelError(
            field,
            f"checkpoint has {blob['num_classes']} classes but the data has {expect_classes}",
            "use a teacher trained on the same label set",
        )
    inputs = blob.get("inputs")
    try:
        model = (
            build_selected(blob["arch"], blob["num_classes"], inputs["names"], inputs["layout"])
            if inputs
            else build_model(blob["arch"], blob["num_classes"], blob["in_channels"], blob["image_size"])
        )
    except (KeyError, TypeError):
        raise CheckpointError(field, f"'{path}' has a malformed inputs record", "re-create the checkpoint") from None
    try:
        model.load_state_dict(blob["state_dict"])
    except RuntimeError:
        raise CheckpointError(
            field,
            f"'{path}' weights do not fit architecture {blob['arch']}",
            "re-create the checkpoint; it is malformed",
        ) from None
    model.eval()
    meta = {k: v for k, v in blob.items() if k != "state_dict"}
    return model, meta
