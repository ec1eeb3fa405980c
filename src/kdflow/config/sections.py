"""The typed config sections. Unknown keys are errors; every field states its default and meaning."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from kdflow.config.adversarial import AdversarialConfig, GeneratorConfig
from kdflow.config.base import Section as _Section
from kdflow.config.tune import TuneConfig


class DataConfig(_Section):
    dataset: Literal["fashion-mnist", "mnist", "cifar10", "imagefolder"] = "fashion-mnist"
    source: str | None = Field(None, description="explicit directory, file or s3:// URI of the raw data")
    download_root: str = Field(".kdflow/downloads", description="where a torchvision download may land")
    val_size: int = Field(5000, ge=1)
    train_subset: int | None = Field(None, ge=1, description="keep this many train samples (after the val split)")
    test_subset: int | None = Field(None, ge=1)
    augment: bool = True
    crop_padding: int = Field(2, ge=0)
    hflip: bool = True
    split_seed: int = 0
    window: str = Field(
        "",
        description="START:END selects raw train samples [START, END); any other text is a "
        "version label. Recorded in lineage either way",
    )


def _amp_off(v: Any) -> Any:
    """YAML 1.1 reads a bare ``off`` (``--set train.amp=off``) as false: that means amp off, not an error."""
    return "off" if v is False else v


class TrainConfig(_Section):
    epochs: int = Field(15, ge=0)
    batch_size: int = Field(128, ge=1)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    warmup_epochs: float = Field(1.0, ge=0)
    step_size: int = Field(5, ge=1, description="epochs between decays for schedule=step")
    gamma: float = Field(0.1, gt=0, le=1)
    grad_clip: float | None = Field(None, gt=0)
    collapse_patience: int = Field(
        2,
        ge=0,
        description="stop with an error once val accuracy has sat at chance for "
        "this many epochs after rising above it (a collapsed student); 0 = off",
    )
    amp: Literal["off", "bf16", "fp16"] = "off"
    channels_last: bool = False

    _amp_off = field_validator("amp", mode="before")(staticmethod(_amp_off))
    keep_freed_memory: bool = Field(
        True,
        description="glibc: keep freed activation buffers for reuse instead of "
        "returning them to the OS each batch (see kdflow.allocator)",
    )
    num_threads: int | None = Field(None, ge=1)
    seed: int = 0
    select: Literal["final", "best_val"] = Field("final", description="which weights a step outputs")
    device: str = "auto"
    mix: Literal["none", "mixup", "cutmix"] = Field(
        "none",
        description="mix each training image with a partner (mixup or cutmix); when distilling, the "
        "teacher sees the identical mixed image (function matching, Beyer et al. 2022), cached or live",
    )
    mix_alpha: float = Field(1.0, gt=0, description="Beta(a, a) draws the mixing weight")


class ModelSection(_Section):
    arch: str
    epochs: int | None = Field(None, ge=0, description="overrides train.epochs for this model")
    lr: float | None = Field(None, gt=0, description="overrides train.lr for this model")
    amp: Literal["off", "bf16", "fp16"] | None = Field(None, description="overrides train.amp for this model")
    channels_last: bool | None = Field(None, description="overrides train.channels_last for this model")

    _amp_off = field_validator("amp", mode="before")(staticmethod(_amp_off))


class TeacherConfig(ModelSection):
    arch: str = "resnet20"
    source: str | None = Field(
        None, description="use this teacher instead of training one: checkpoint path, s3:// URI or models:/ URI"
    )
    snapshot_epochs: list[int] = Field(
        default_factory=list,
        description="also save the teacher after these epochs (model-epoch<N>.pt), for distill.teacher_checkpoint",
    )
    adversarial: bool = Field(
        False, description="train the teacher on PGD examples (Madry et al.), the attack of adversarial.train_*"
    )

    @field_validator("snapshot_epochs")
    @classmethod
    def _positive_epochs(cls, v: list[int]) -> list[int]:
        if any(e < 1 for e in v):
            raise ValueError(f"epochs count from 1 (got {v}); fix: e.g. teacher.snapshot_epochs=[5, 10]")
        return sorted(set(v))


class StudentConfig(ModelSection):
    arch: str = "cnn-small"


def _registered(kind: str, registry: str) -> str:
    """Loss names come from kdflow.loss_registry (imported when a config is validated, not before)."""
    from kdflow import loss_registry

    names = getattr(loss_registry, registry)
    if kind not in names:
        raise ValueError(f"unknown loss '{kind}'; fix: use one of: {', '.join(names)}")
    return kind


class FeatureLossSpec(_Section):
    kind: str = Field(description="a name in kdflow.loss_registry.FEATURE_LOSSES: fitnets, at, rkd, sp, ...")
    student_module: str
    teacher_module: str
    weight: float = Field(1.0, ge=0)
    distance_weight: float = Field(25.0, ge=0, description="rkd only")
    angle_weight: float = Field(50.0, ge=0, description="rkd only")

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        return _registered(v, "FEATURE_LOSSES")


class ScratchTwinConfig(_Section):
    """The scratch twin's own recipe where it was tuned separately (kdflow tune); None = the student's."""

    lr: float | None = Field(None, gt=0)
    epochs: int | None = Field(None, ge=0)
    weight_decay: float | None = Field(None, ge=0)
    mix: Literal["none", "mixup", "cutmix"] | None = None


class AssistantConfig(_Section):
    """A teacher assistant (Mirzadeh et al., AAAI 2020): the teacher is distilled into it, it into the student."""

    arch: str = Field(description="a model between teacher and student in size, e.g. cnn-wide or cnn-24x4")
    epochs: int | None = Field(None, ge=1, description="its own schedule; default the student's")


class ExtraTeacher(_Section):
    arch: str
    source: str


class DistillConfig(_Section):
    method: str = Field(
        "kd",
        description="a name in kdflow.loss_registry.SOFT_LOSSES: kd, dkd, ard (robust student: the soft "
        "term on PGD examples of the student, Goldblum et al. 2020), dfad (data-free, with data_free)",
    )
    temperature: float = 4.0
    alpha: float = Field(0.1, description="weight of the HARD loss: L = alpha*CE + (1-alpha)*soft")
    dkd_alpha: float = Field(1.0, ge=0)
    dkd_beta: float = Field(8.0, ge=0)
    dkd_warmup_epochs: int = Field(
        3,
        ge=0,
        description="DKD weight ramps linearly over this many epochs; 0 = none "
        "(without a warm-up DKD collapsed to chance in bench/protocol.py)",
    )
    features: list[FeatureLossSpec] = Field(default_factory=list)
    extra_teachers: list[ExtraTeacher] = Field(default_factory=list)
    ensemble: Literal["mean_logits", "mean_probs"] = "mean_probs"
    cache: bool = Field(False, description="offline KD: replay cached teacher logits of K stored augmented views")
    cache_views: int = Field(0, ge=0, description="K views per sample; 0 = one per student epoch")
    cache_seed: int = 0
    cache_dir: str | None = Field(None, description="default: <storage.state_dir>/teacher_cache")
    assistant: AssistantConfig | None = Field(
        None, description="bridge a large capacity gap: teacher -> assistant -> student, each by this recipe"
    )
    teacher_checkpoint: str = Field(
        "final",
        pattern=r"^(final|best_val|epoch:[1-9][0-9]*)$",
        description="which teacher to distil from: final, best_val (the best validation epoch) or epoch:N "
        "(a snapshot; early-stopped teachers can suit small students, Cho & Hariharan 2019)",
    )
    compile_teacher: bool = Field(
        False,
        description="torch.compile the frozen teacher(s) for the online forward and "
        "the cache build (bench/compile.py measures it; on CPU it needs a C++ compiler)",
    )
    data_free: bool = Field(
        False,
        description="distil without reading any training image: a generator makes the inputs (method dfad, "
        "Fang et al. 2019); val/test are read for reporting only",
    )
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig)

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        return _registered(v, "SOFT_LOSSES")

    @field_validator("temperature")
    @classmethod
    def _positive_temperature(cls, v: float) -> float:
        if not v > 0:
            raise ValueError(f"must be > 0 (got {v}); fix: set a positive temperature, e.g. distill.temperature=4")
        return v

    @field_validator("alpha")
    @classmethod
    def _alpha_in_unit_interval(cls, v: float) -> float:
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"must be in [0, 1] (got {v}); fix: alpha weights the hard loss, e.g. distill.alpha=0.1")
        return v

    @model_validator(mode="after")
    def _cache_needs_logits_only(self) -> DistillConfig:
        if self.cache and self.features:
            raise ValueError(
                "a teacher cache holds logits only, feature losses need the live teacher; "
                "fix: set distill.cache=false or remove distill.features"
            )
        if self.cache and self.extra_teachers:
            raise ValueError(
                "the teacher cache supports one teacher; fix: set distill.cache=false or drop extra_teachers"
            )
        if self.compile_teacher and self.features:
            raise ValueError(
                "a compiled teacher exposes no intermediate features to the feature taps; "
                "fix: set distill.compile_teacher=false or remove distill.features"
            )
        if self.method == "ard" and self.features:
            raise ValueError(
                "ARD matches the teacher's outputs on the student's adversarial examples, not features; "
                "fix: remove distill.features or set distill.method=kd"
            )
        return self._data_free_is_consistent()

    def _data_free_is_consistent(self) -> DistillConfig:
        if self.data_free != (self.method == "dfad"):
            raise ValueError(
                "data-free distillation is method dfad and dfad is data-free; "
                "fix: set both distill.data_free=true and distill.method=dfad, or neither"
            )
        if not self.data_free:
            return self
        needs_data = {
            "features": "a feature loss needs the teacher's features on real images; fix: remove distill.features",
            "cache": "a teacher cache holds logits of real images; fix: set distill.cache=false",
            "extra_teachers": "data-free distillation uses one teacher; fix: drop distill.extra_teachers",
            "assistant": "a teacher assistant is trained on real images; fix: drop distill.assistant",
        }
        for name, why in needs_data.items():
            if getattr(self, name):
                raise ValueError(f"distill.data_free: {why}")
        return self

    @property
    def hard_weight(self) -> float:
        return self.alpha

    @property
    def soft_weight(self) -> float:
        return 1.0 - self.alpha


class EvaluateConfig(_Section):
    ece_bins: int = Field(15, ge=2)
    latency_warmup: int = Field(10, ge=0)
    latency_repeats: int = Field(100, ge=1)
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
    int8_max_accuracy_drop: float = Field(0.01, ge=0, le=1, description="on the validation split")
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


class Config(_Section):
    data: DataConfig = Field(default_factory=DataConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    scratch_twin: ScratchTwinConfig = Field(default_factory=ScratchTwinConfig)
    adversarial: AdversarialConfig = Field(default_factory=AdversarialConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    profile: str = "base"

    @model_validator(mode="after")
    def _mix_needs_label_free_soft_loss(self) -> Config:
        if self.train.mix != "none" and self.distill.method == "dkd":
            raise ValueError(
                "DKD splits the loss at the one true class, a mixed image has two; "
                "fix: set train.mix=none or distill.method=kd"
            )
        return self

    @model_validator(mode="after")
    def _data_free_reads_no_training_image(self) -> Config:
        if self.distill.data_free and self.train.mix != "none":
            raise ValueError("distill.data_free: mixing combines real training images; fix: set train.mix=none")
        return self

    @property
    def adversarial_scratch_twin(self) -> bool:
        """ARD's baseline is a scratch twin trained adversarially the same way (labels only)."""
        return self.distill.method == "ard"

    @model_validator(mode="after")
    def _snapshots_exist_for_the_space(self) -> Config:
        wanted = {
            c for c in [*self.tune.space.teacher_checkpoints, self.distill.teacher_checkpoint] if c.startswith("epoch:")
        }
        missing = sorted(int(c.split(":")[1]) for c in wanted) if not self.teacher.source else []
        missing = [e for e in missing if e not in self.teacher.snapshot_epochs]
        if missing:
            raise ValueError(
                f"teacher checkpoints of epochs {missing} are asked for but not saved; "
                f"fix: add them to teacher.snapshot_epochs, e.g. teacher.snapshot_epochs={missing}"
            )
        return self

    @property
    def has_scratch_twin(self) -> bool:
        """A best.yaml of kdflow tune: the scratch twin has a recipe of its own."""
        return any(v is not None for v in self.scratch_twin.model_dump().values())

    def scratch_config(self) -> Config:
        """This config with the scratch twin's own recipe applied (the scratch step trains with it)."""
        twin = self.scratch_twin
        out = self.model_copy(deep=True)
        if twin.lr is not None:
            out.student.lr = twin.lr
        if twin.epochs is not None:
            out.student.epochs = twin.epochs
        if twin.weight_decay is not None:
            out.train.weight_decay = twin.weight_decay
        if twin.mix is not None:
            out.train.mix = twin.mix
        return out

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def digest(self) -> str:
        """Hash of the resolved config, stable across key order."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def epochs_for(self, role: str) -> int:
        section = self.teacher if role == "teacher" else self.student
        return section.epochs if section.epochs is not None else self.train.epochs

    def lr_for(self, role: str) -> float:
        section = self.teacher if role == "teacher" else self.student
        return section.lr if section.lr is not None else self.train.lr

    def train_for(self, role: str) -> TrainConfig:
        """``train`` with the model's own precision and memory layout (teacher.amp, student.channels_last, ...)."""
        section = self.teacher if role == "teacher" else self.student
        own = {k: getattr(section, k) for k in ("amp", "channels_last") if getattr(section, k) is not None}
        return self.train.model_copy(update=own) if own else self.train
