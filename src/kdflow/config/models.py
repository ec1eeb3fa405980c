"""The teacher and student sections: architecture, schedule overrides, pretrained weights, named inputs."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from kdflow.config.base import Section as _Section
from kdflow.config.base import amp_off as _amp_off

PRETRAINED_ARCHS = ("minilm",)  # built to load their pinned pretrained weights


class ModelSection(_Section):
    arch: str
    epochs: int | None = Field(None, ge=0, description="overrides train.epochs for this model")
    lr: float | None = Field(None, gt=0, description="overrides train.lr for this model")
    amp: Literal["off", "bf16", "fp16"] | None = Field(None, description="overrides train.amp for this model")
    channels_last: bool | None = Field(None, description="overrides train.channels_last for this model")
    weights: str | None = Field(
        None,
        description="start from pretrained weights: a file (a state dict, wrapped or not), an s3:// object or a "
        "torchvision weights name found in the torch hub cache (e.g. ResNet18_Weights.IMAGENET1K_V1); the "
        "classifier becomes a new head for the dataset's classes, an RGB first conv is summed for grey data",
    )
    finetune: Literal["full", "head"] = Field(
        "full", description="with weights: train all of it (backbone at backbone_lr_mult) or only the new head"
    )
    backbone_lr_mult: float = Field(
        0.1, gt=0, le=1, description="with weights and finetune=full: the backbone's lr scale"
    )
    finetune_layers: int | None = Field(
        None,
        ge=0,
        description="with weights and finetune=full: only the top N layers of a layered backbone train (minilm: "
        "of its 6), at backbone_lr_mult, the rest frozen; None = all of it",
    )
    inputs: list[str] | None = Field(
        None,
        description="the dataset's named inputs this model sees (multiview-digits: view:fou, view:fac, view:kar, "
        "view:pix, view:zer, view:mor, image); None: all its views (an image dataset's one image)",
    )

    _amp_off = field_validator("amp", mode="before")(staticmethod(_amp_off))

    @model_validator(mode="after")
    def _layers_of_full_finetune(self) -> ModelSection:
        if self.finetune_layers is not None and self.finetune != "full":
            raise ValueError(
                "finetune_layers: picks the layers a full fine-tune trains; fix: set finetune: full (or unset finetune_layers)"
            )
        if self.finetune_layers is not None and not self.pretrained:  # would be ignored: nothing is pretrained
            raise ValueError(
                "finetune_layers: fine-tunes pretrained weights and this model starts from none; fix: set weights "
                "(or arch minilm), or unset finetune_layers"
            )
        return self

    @property
    def pretrained(self) -> bool:
        """Whether the model starts from pretrained weights: given ones, an hf:<dir> model's own, minilm's."""
        return self.weights is not None or self.arch.startswith("hf:") or self.arch in PRETRAINED_ARCHS


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
