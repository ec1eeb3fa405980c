"""What each step returns and writes to ``OUT/step.json``, and reads back through the same type.

The results are ``TypedDict``s: typed for mypy, validated by pydantic when read back, and plain dicts
at run time. They stay dicts on purpose: the KFP components index them by key, and the components'
source is embedded verbatim in the compiled pipeline YAML, whose golden copy must not change.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import (
    Any,
    NotRequired,  # pydantic validates these on Python < 3.12
    TypeVar,
    cast,
)

from pydantic import TypeAdapter, ValidationError
from typing_extensions import TypedDict

from kdflow.errors import CheckpointError
from kdflow.evaluation.gate import Gate
from kdflow.infra.io import atomic_write_json, read_json

STEP_FILE = "step.json"


class StepResult(TypedDict):
    """Who ran the step: the pipeline run and its MLflow parent run (None when tracking is off)."""

    pipeline_run_id: str
    parent_run_id: str | None
    run_id: NotRequired[str]  # the step's own MLflow run


class PrepResult(StepResult):
    digest: str
    test_digest: str
    counts: dict[str, int]
    dataset: str
    window: str
    config_hash: str


class Started(TypedDict):
    """How a training step began. ``epoch``: the last epoch the resumed checkpoint had finished (1-based),
    so a resumed step always says N > 0; ``pipeline_run_id``: the run whose model was reused."""

    how: str  # "fresh", "resumed" or "reused"
    epoch: NotRequired[int]
    pipeline_run_id: NotRequired[str]


def started(resumed_from: int | None, reused_from: dict[str, Any] | None = None) -> Started:
    """The step's start record from the trainer's ``resumed_from`` (0-based epoch index) or a reuse entry."""
    if reused_from is not None:
        return {"how": "reused", "pipeline_run_id": str(reused_from.get("pipeline_run_id") or "?")}
    if resumed_from is not None:
        return {"how": "resumed", "epoch": resumed_from + 1}
    return {"how": "fresh"}


def describe_start(start: Started) -> str:
    """One phrase for the step's output line: 'trained', 'resumed from epoch 3', 'reused (trained by ...)'."""
    if start["how"] == "reused":
        return f"reused (trained by pipeline run {start.get('pipeline_run_id', '?')})"
    if start["how"] == "resumed":
        return f"resumed from epoch {start.get('epoch')}"
    return "trained"


class TrainResult(StepResult):
    """A trained (or provided) model: teacher, scratch student or distilled student."""

    role: str
    arch: str
    data_digest: str
    metrics: dict[str, Any]
    config_hash: NotRequired[str]
    lineage: NotRequired[dict[str, str]]  # kdflow.teacher_* tags of a distilled student
    fingerprint: NotRequired[dict[str, Any]]  # what the weights depend on (kdflow.infra.fingerprint)
    artifact_uri: NotRequired[str | None]
    model_id: NotRequired[str]
    model_uri: NotRequired[str]
    registered_version: NotRequired[str]
    registered_uri: NotRequired[str]
    source: NotRequired[str]  # a provided teacher: where it came from
    reused_from: NotRequired[dict[str, Any]]  # storage.reuse: the run that trained these exact weights
    started: NotRequired[Started]  # how the step began: fresh, resumed from a checkpoint, or reused


class EvaluationResult(StepResult):
    quality_gate: Gate
    student_accuracy: float


class ExportResult(StepResult):
    gate: NotRequired[Gate]
    gate_passed: bool
    parity_ok: bool
    student_model_uri: str | None
    student_sha256: NotRequired[str]  # the weights exported (kdflow.steps.chain): promote checks its --student
    data_digest: NotRequired[str]  # the data its gate and parity were judged on
    artifact_uri: str | None
    onnx_int8_model_id: NotRequired[str]


class PromotionResult(TypedDict):
    promoted: bool
    reason: str
    name: NotRequired[str]
    version: NotRequired[str]
    split: NotRequired[str]  # the promotion split the decision was made on (val)
    forced: NotRequired[bool]
    challenger_accuracy: NotRequired[float]
    challenger_test_accuracy: NotRequired[float]  # reported, never used to decide
    champion_accuracy: NotRequired[float | None]
    champion_version: NotRequired[str | None]
    p_value: NotRequired[float]
    challenger_only_correct: NotRequired[int]
    champion_only_correct: NotRequired[int]


R = TypeVar("R")


def merged(result: R, ids: Mapping[str, Any]) -> R:
    """``result`` with the ids a record function returned (MLflow run, model, registry version)."""
    return cast(R, {**cast(dict, result), **ids})


def write(out_dir: str | Path, result: Any, inputs: dict[str, Any] | None = None) -> Path:
    """``step.json``, then (for a step that claimed its directory) the manifest marked complete, listing the
    sha256 of every output and ``inputs``: what the step consumed (kdflow.infra.step_manifest)."""
    from kdflow.infra import step_manifest

    path = atomic_write_json(Path(out_dir) / STEP_FILE, result)
    if step_manifest.read(Path(out_dir)) is not None:
        step_manifest.complete(Path(out_dir), inputs)
    return path


def read(out_dir: str | Path, kind: type[R]) -> R | None:
    """The result a step left in ``out_dir``, validated against its type; None when there is none."""
    path = Path(out_dir) / STEP_FILE
    if not path.is_file():
        return None
    try:
        return TypeAdapter(kind).validate_python(read_json(path))
    except (ValidationError, ValueError) as e:
        raise CheckpointError(
            str(path),
            f"is not a {kind.__name__} ({str(e).splitlines()[0]})",
            "re-run the step that writes this directory",
        ) from None
