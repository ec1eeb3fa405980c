"""The typed config: data, train, teacher and student sections and the whole Config.

The distill section lives in :mod:`kdflow.config.distill`, the sections after training in
:mod:`kdflow.config.release`. Unknown keys are errors; every field states its default and meaning.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from kdflow.config.adversarial import AdversarialConfig
from kdflow.config.base import Section as _Section
from kdflow.config.base import amp_off as _amp_off
from kdflow.config.distill import DistillConfig, ScratchTwinConfig
from kdflow.config.models import StudentConfig, TeacherConfig
from kdflow.config.release import EvaluateConfig, ExportConfig, GateConfig, StorageConfig, TrackingConfig
from kdflow.config.tune import TuneConfig

# rows of named inputs, not images (kdflow.data.multiview, kdflow.data.text)
FEATURE_DATASETS = ("multiview-digits", "wordnet-supersense")


class DataConfig(_Section):
    dataset: Literal["fashion-mnist", "mnist", "cifar10", "imagefolder", "multiview-digits", "wordnet-supersense"] = (
        Field(
            "fashion-mnist",
            description="multiview-digits: six feature views of 2,000 digits (inputs view:<name> and image); "
            "wordnet-supersense: WordNet noun glosses -> supersense (inputs tokens and view:minilm); the others are "
            "images (input image)",
        )
    )
    num_classes: int | None = Field(
        None, ge=2, description="wordnet-supersense: keep the N largest of the 26 supersenses (None: 10)"
    )
    max_tokens: int = Field(32, ge=4, le=512, description="wordnet-supersense: WordPiece tokens per gloss (padded)")
    source: str | None = Field(None, description="explicit directory, file or s3:// URI of the raw data")
    download_root: str = Field(".kdflow/downloads", description="where a torchvision download may land")
    val_size: int = Field(5000, ge=1)
    train_subset: int | None = Field(None, ge=1, description="keep this many train samples (after the val split)")
    test_subset: int | None = Field(None, ge=1)
    augment: bool = True
    train_crop: Literal["pad", "resized"] = Field(
        "pad",
        description="pad: RandomCrop with crop_padding; resized: RandomResizedCrop (crop_scale, crop_ratio) from "
        "the stored image (data.store_size) to data.image_size",
    )
    crop_padding: int = Field(2, ge=0)
    crop_scale: tuple[float, float] = Field((0.25, 1.0), description="RandomResizedCrop's share of the area")
    crop_ratio: tuple[float, float] = Field((3 / 4, 4 / 3), description="RandomResizedCrop's aspect ratio range")
    hflip: bool = True
    store_size: int | None = Field(
        None,
        ge=4,
        description="prep keeps images at this size (shorter side, centre square), larger than data.image_size: "
        "train crops come from it, evaluation takes its centre image_size (resize 256 -> crop 224). None: "
        "image_size",
    )
    image_size: int | None = Field(
        None,
        ge=4,
        description="resize each image's shorter side to this and center-crop a square (at prep; antialiased); "
        "None keeps the source size, which must then be one size",
    )
    channels: Literal[1, 3] | None = Field(
        None, description="1 = grey, 3 = RGB; None: grey when every image is grey, else RGB"
    )
    max_bad_files: int = Field(
        0,
        ge=0,
        description="imagefolder: unreadable files (corrupt, truncated, not an image) tolerated and listed in the "
        "manifest; one more stops prep naming the first",
    )
    labels_kept: int | None = Field(
        None,
        ge=1,
        description="keep the labels of this many train images (seeded); the rest of the window's train images "
        "become the unlabeled transfer set (their labels dropped at prep), which only distillation reads",
    )
    unlabeled: str | None = Field(
        None,
        description="a directory (any layout, searched recursively) or s3:// prefix of images without labels: "
        "more of the unlabeled transfer set, fitted to the data's channels and size",
    )
    storage: Literal["auto", "memory", "disk"] = Field(
        "auto",
        description="where the prepared pixels live: memory (each split one tensor), disk (decoded once into "
        "pixels.u8 and read a batch at a time: bounded memory for data larger than RAM), auto (disk for an image "
        "folder decoding to more than 2 GiB). Same digests and batches either way",
    )
    mean: list[float] | None = Field(
        None,
        description="normalisation mean per channel on the 0-1 scale (e.g. ImageNet's [0.485, 0.456, 0.406] for a "
        "teacher pretrained with it); None: the dataset's own (built in, or computed over train at prep)",
    )
    std: list[float] | None = Field(None, description="normalisation std per channel, with data.mean")
    split_seed: int = 0
    release_fraction: float = Field(
        0.05,
        ge=0,
        lt=0.5,
        description="share of the raw train stream held out as the release split, which only the gate's "
        "final check and promotion read (never training or selection); chosen by each image's content hash, so "
        "it is the same for every data window. 0 = none (the gate and promotion then refuse)",
    )
    release_seed: int = Field(0, description="seed of the release split's content hash")
    window: str = Field(
        "",
        description="START:END selects raw train samples [START, END); any other text is a "
        "version label. Recorded in lineage either way",
    )

    @property
    def stored_size(self) -> int | None:
        """The size prep stores images at (train crops come from it)."""
        return self.store_size or self.image_size

    @property
    def stored_larger(self) -> bool:
        """Whether images are stored larger than the model's input (train crops from them, evaluation centres)."""
        return self.store_size is not None and self.store_size != self.image_size

    @property
    def supersenses(self) -> int:
        """wordnet-supersense's class count (``data.num_classes``, default 10)."""
        return self.num_classes or 10

    @model_validator(mode="after")
    def _classes_chosen_only_where_they_are(self) -> DataConfig:
        if self.num_classes is not None and self.dataset != "wordnet-supersense":
            raise ValueError(
                f"data.num_classes: {self.dataset} has a fixed label set; fix: unset it (it picks wordnet-supersense's "
                "N largest supersenses)"
            )
        return self

    @model_validator(mode="after")
    def _normalisation_given_whole(self) -> DataConfig:
        if (self.mean is None) != (self.std is None):
            raise ValueError("data.mean: mean and std come together; fix: set both data.mean and data.std, or neither")
        if self.std is not None and (len(self.std) != len(self.mean or []) or min(self.std) <= 0):
            raise ValueError(
                f"data.std: {self.std} needs one positive value per channel of data.mean; fix: e.g. [0.229, 0.224, 0.225]"
            )
        if self.mean is not None and self.channels is not None and len(self.mean) != self.channels:
            raise ValueError(
                f"data.mean: {len(self.mean)} values for {self.channels} channel(s); fix: give one per channel"
            )
        return self

    @model_validator(mode="after")
    def _crops_fit(self) -> DataConfig:
        if self.store_size is not None and (self.image_size is None or self.store_size < self.image_size):
            raise ValueError(
                f"data.store_size: {self.store_size} needs data.image_size set and not larger; "
                "fix: set data.image_size (e.g. 224 with store_size 256) or unset data.store_size"
            )
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"data.crop_scale: {[lo, hi]} is not 0 < min <= max <= 1; fix: e.g. [0.25, 1.0]")
        if not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError(f"data.crop_ratio: {list(self.crop_ratio)} is not 0 < min <= max; fix: e.g. [0.75, 1.333]")
        return self


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
        "returning them to the OS each batch (see kdflow.infra.allocator)",
    )
    num_threads: int | None = Field(None, ge=1)
    precise_bn: Literal["auto", "on", "off"] = Field(
        "auto",
        description="recompute BatchNorm statistics for the current weights before each validation (PreciseBN); "
        "auto: only for models whose statistics lag (momentum < 0.1, e.g. torchvision's MobileNetV3)",
    )
    precise_bn_batches: int = Field(32, ge=1, description="train batches (seeded, evaluation view) PreciseBN averages")
    loader_workers: int | None = Field(
        None,
        ge=0,
        description="DataLoader worker processes that read and augment training batches; None: 0 for data in "
        "memory, else from the CPU quota (at least 1); batches are the same either way",
    )
    seed: int = 0
    select: Literal["final", "best_val"] = Field("final", description="which weights a step outputs")
    device: str = "auto"
    mix: Literal["none", "mixup", "cutmix"] = Field(
        "none",
        description="mix each training image with a partner (mixup or cutmix); when distilling, the "
        "teacher sees the identical mixed image (function matching, Beyer et al. 2022), cached or live",
    )
    mix_alpha: float = Field(1.0, gt=0, description="Beta(a, a) draws the mixing weight")


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
                "train.mix: DKD splits the loss at the one true class, a mixed image has two; "
                "fix: set train.mix=none or distill.method=kd"
            )
        return self

    @model_validator(mode="after")
    def _image_only_methods_need_images(self) -> Config:
        """Pixel-space attacks, generated images and mixed images have no meaning for rows of feature views."""
        if self.data.dataset not in FEATURE_DATASETS:
            return self
        for wanted, field in (
            (self.distill.data_free, "distill.data_free"),
            (self.distill.adversarial, "distill.method"),
            (self.teacher.adversarial, "teacher.adversarial"),
            (self.train.mix != "none", "train.mix"),
        ):
            if wanted:
                raise ValueError(
                    f"{field}: works on images, and {self.data.dataset} holds feature rows; fix: unset it (logit, "
                    "feature and relation losses and the transfer set work on named inputs)"
                )
        return self

    @model_validator(mode="after")
    def _data_free_reads_no_training_image(self) -> Config:
        if self.distill.data_free and self.train.mix != "none":
            raise ValueError("distill.data_free: mixing combines real training images; fix: set train.mix=none")
        return self

    @property
    def adversarial_scratch_twin(self) -> bool:
        """ARD's (and RSLAD's) baseline is a scratch twin trained adversarially the same way (labels only)."""
        return self.distill.adversarial

    @model_validator(mode="after")
    def _snapshots_exist_for_the_space(self) -> Config:
        wanted = {
            c for c in [*self.tune.space.teacher_checkpoints, self.distill.teacher_checkpoint] if c.startswith("epoch:")
        }
        missing = sorted(int(c.split(":")[1]) for c in wanted) if not self.teacher.source else []
        missing = [e for e in missing if e not in self.teacher.snapshot_epochs]
        if missing:
            raise ValueError(
                f"teacher.snapshot_epochs: teacher checkpoints of epochs {missing} are asked for but not saved; "
                f"fix: add them to teacher.snapshot_epochs, e.g. teacher.snapshot_epochs={missing}"
            )
        return self

    @model_validator(mode="after")
    def _snapshots_within_the_teachers_schedule(self) -> Config:
        """A snapshot of an epoch the teacher never reaches was silently never written."""
        epochs = self.epochs_for("teacher")
        beyond = sorted(e for e in self.teacher.snapshot_epochs if e > epochs) if not self.teacher.source else []
        if beyond:
            raise ValueError(
                f"teacher.snapshot_epochs: {beyond} are beyond the teacher's {epochs} epochs and would never be "
                f"saved; fix: keep them within 1..{epochs} or raise teacher.epochs"
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
        if twin.augment is not None:  # the scratch step trains on this view of the prepared data
            out.data.augment = twin.augment
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
