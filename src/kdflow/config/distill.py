"""The distill section: the soft loss, features, teachers, cache, assistant, the scratch twin's recipe."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from kdflow.config.adversarial import GeneratorConfig
from kdflow.config.base import Section as _Section


def _registered(kind: str, registry: str) -> str:
    """Loss names come from kdflow.training.loss_registry (imported when a config is validated, not before)."""
    from kdflow.training import loss_registry

    names = getattr(loss_registry, registry)
    if kind not in names:
        raise ValueError(f"unknown loss '{kind}'; fix: use one of: {', '.join(names)}")
    return kind


class FeatureLossSpec(_Section):
    kind: str = Field(
        description="a name in kdflow.training.loss_registry.FEATURE_LOSSES: fitnets, at, rkd, sp, attention, ..."
    )
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
    augment: bool | None = Field(None, description="its own train view (data.augment) where it differs from the pick's")


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
        description="a name in kdflow.training.loss_registry.SOFT_LOSSES: kd, dkd, ard (robust student: the soft "
        "term on PGD examples of the student, Goldblum et al. 2020), rslad (ARD with robust soft labels: the attack "
        "and 5/6 of the soft term against the teacher's soft labels, 1/6 on the clean image; Zi et al. 2021; use "
        "with temperature 1 and alpha 0), dfad (data-free, with data_free)",
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
    unlabeled: bool = Field(
        True,
        description="learn also from the data's unlabeled transfer set when it has one (data.labels_kept, "
        "data.unlabeled): the teacher's soft targets there, the hard loss on the labelled images only",
    )
    cache: bool = Field(False, description="offline KD: replay cached teacher logits of K stored augmented views")
    cache_views: int = Field(0, ge=0, description="K views per sample; 0 = one per student epoch")
    cache_seed: int = 0
    cache_topk: int | None = Field(
        None,
        ge=1,
        description="keep each view's k largest teacher logits (FKD; the other classes share the rest of the "
        "softmax mass): bytes per view for many classes; None or >= the class count keeps all",
    )
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
        if self.compile_teacher and self.features:
            raise ValueError(
                "a compiled teacher exposes no intermediate features to the feature taps; "
                "fix: set distill.compile_teacher=false or remove distill.features"
            )
        if self.adversarial and self.features:
            raise ValueError(
                "ARD and RSLAD match the teacher's outputs on the student's adversarial examples, not features; "
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
    def adversarial(self) -> bool:
        """The student's soft term is on its own PGD examples (ard, rslad): its scratch twin trains adversarially."""
        from kdflow.training.loss_registry import SOFT_LOSSES

        return SOFT_LOSSES[self.method].adversarial

    @property
    def soft_weight(self) -> float:
        return 1.0 - self.alpha
