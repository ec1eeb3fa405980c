"""The sections after training: evaluate, export, gate, tracking, storage."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from kdflow.config.base import Section as _Section


class EvaluateConfig(_Section):
    ece_bins: int = Field(15, ge=2)
    latency_warmup: int = Field(10, ge=0)
    latency_repeats: int = Field(100, ge=1)
    latency_rounds: int = Field(
        5, ge=1, description="latency timed in this many rounds; the gate reads the least disturbed round's p95"
    )
    throughput_batch: int = Field(256, ge=1)
    throughput_repeats: int = Field(10, ge=1)


class ExportConfig(_Section):
    formats: list[Literal["onnx", "onnx_int8", "torchscript"]] = Field(
        default_factory=lambda: ["onnx", "onnx_int8", "torchscript"]  # type: ignore[arg-type]
    )
    opset: int = Field(17, ge=11)
    calibration_samples: int = Field(512, ge=0)
    parity_atol: float = Field(1e-3, gt=0, description="max |logit diff| allowed for fp32 exports")
    int8_min_agreement: float = Field(0.97, ge=0, le=1, description="top-1 agreement int8 vs PyTorch")
    int8_max_accuracy_drop: float = Field(0.01, ge=0, le=1, description="on the release split")
    promote_format: Literal["pytorch", "onnx_int8"] = "pytorch"


class GateConfig(_Section):
    min_accuracy: float = Field(0.5, ge=0, le=1)
    min_retention: float = Field(0.8, ge=0)
    max_latency_p95_ms: float = Field(50.0, gt=0)
    max_size_bytes: int = Field(50_000_000, gt=0)
    require_export_parity: bool = True
    min_improvement: float = Field(
        0.0, ge=0, description="validation-accuracy margin the challenger needs over the champion"
    )
    min_kd_gain: float | None = Field(
        None,
        ge=-1,
        le=1,
        description="the distilled student must beat its scratch twin by this much validation accuracy "
        "(e.g. 0.005 = +0.5 pt); None = not required",
    )
    promotion_alpha: float = Field(
        0.05,
        gt=0,
        lt=1,
        description="the challenger must beat the champion beyond noise: one-sided McNemar "
        "exact test on the validation split, p below this",
    )
    min_robust_accuracy: float | None = Field(
        None,
        ge=0,
        le=1,
        description="the student's PGD robust accuracy (adversarial.eps, .steps) on the validation "
        "split must reach this; None = not required",
    )
    promotion_lease_s: float = Field(
        300.0, gt=0, description="a promotion lease expires after this (a killed promoter)"
    )
    promotion_lease_wait_s: float = Field(600.0, ge=0, description="how long a promoter waits for the lease")


class TrackingConfig(_Section):
    enabled: bool = True
    uri: str | None = Field(
        None, description="MLflow tracking URI; default $MLFLOW_TRACKING_URI or sqlite in state_dir"
    )
    experiment: str = "kdflow"
    registered_model: str = "kd-student"
    teacher_registered_model: str = "kd-teacher"


class StorageConfig(_Section):
    root: str | None = Field(None, description="local directory or s3://bucket/prefix for artifacts")
    state_dir: str = Field(".kdflow", description="local state: sqlite MLflow db, caches")
    reuse: bool = Field(
        True,
        description="a training step whose fingerprint (config fields, data content, teacher, kdflow version) "
        "matches a model an earlier run trained takes that model from <state_dir>/trained instead of retraining",
    )
    carry_checkpoint: bool = Field(
        True,
        description="keep each training step's last epoch checkpoint in <state_dir>/running as well, so the step "
        "started again in a new output folder (a retried pod, a rerun of the local DAG) resumes it",
    )
    reuse_max_gb: float | None = Field(
        20.0,
        gt=0,
        description="size cap of <state_dir>/trained: after each publish the least recently used entries are "
        "evicted until it fits (null: no cap); `kdflow store ls|gc` shows and trims it",
    )
