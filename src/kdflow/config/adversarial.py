"""Config of adversarial distillation: the attack (evaluation and training) and the data-free generator."""

from __future__ import annotations

from pydantic import Field, field_validator

from kdflow.config.base import Section


def _eps_in_pixel_range(v: float, field: str) -> float:
    if not 0.0 <= v <= 1.0:
        raise ValueError(
            f"must be in [0, 1] (got {v}): eps is an L-inf radius in the [0, 1] pixel scale; "
            f"fix: e.g. {field}=0.1 (about 25 grey levels)"
        )
    return v


class AdversarialConfig(Section):
    """L-inf attacks in the input's [0, 1] pixel scale (before normalisation), random start, seeded.

    ``eps``/``steps`` are what evaluation reports (FGSM and PGD) and what ``gate.min_robust_accuracy``
    reads; ``train_*`` are the attack adversarial training uses (``distill.method: ard``, the
    adversarially trained scratch twin, ``teacher.adversarial``).
    """

    evaluate: bool = Field(True, description="report FGSM/PGD robust accuracy and the robustness curve")
    eps: float = Field(0.1, description="L-inf radius in [0, 1] pixels (0.1 = about 25 grey levels)")
    steps: int = Field(10, description="PGD iterations for the reported robust accuracy")
    step_size: float | None = Field(None, gt=0, description="PGD step; default 2.5 * eps / steps (Madry et al.)")
    random_start: bool = True
    seed: int = 0
    eval_samples: int = Field(
        1000, ge=1, description="first N samples of val (gate) and test (report): PGD costs steps+1 passes each"
    )
    curve_eps: list[float] = Field(
        default_factory=lambda: [0.0, 0.05, 0.1, 0.15, 0.2], description="the robustness curve's radii (PGD)"
    )
    train_eps: float | None = Field(None, description="adversarial training radius; default eps")
    train_steps: int = Field(5, description="PGD iterations per training batch (cost: about steps+1 passes)")

    @field_validator("eps", "train_eps")
    @classmethod
    def _eps(cls, v: float | None, info) -> float | None:
        return None if v is None else _eps_in_pixel_range(v, f"adversarial.{info.field_name}")

    @field_validator("curve_eps")
    @classmethod
    def _curve(cls, v: list[float]) -> list[float]:
        for e in v:
            _eps_in_pixel_range(e, "adversarial.curve_eps=[0, 0.05, 0.1]")
        return sorted(set(v))

    @field_validator("steps", "train_steps")
    @classmethod
    def _steps(cls, v: int, info) -> int:
        if v < 1:
            raise ValueError(f"must be >= 1 (got {v}); fix: e.g. adversarial.{info.field_name}=10")
        return v

    def pgd_step(self, eps: float, steps: int) -> float:
        return self.step_size if self.step_size is not None else 2.5 * eps / steps

    @property
    def training_eps(self) -> float:
        return self.train_eps if self.train_eps is not None else self.eps


class GeneratorConfig(Section):
    """The generator of data-free distillation (``distill.data_free``): DFAD's min-max on generated images."""

    latent: int = Field(128, ge=1, description="size of the noise vector z")
    width: int = Field(
        32, ge=1, description="channels of the generator's last feature map (2x this before); 64 costs 4x on CPU"
    )
    lr: float = Field(1e-3, gt=0, description="Adam learning rate of the generator")
    iterations: int = Field(1000, ge=1, description="generator steps in all")
    batch: int = Field(128, ge=1, description="generated images per step (student and generator steps)")
    student_steps: int = Field(5, ge=1, description="student steps per generator step (DFAD: 5)")
    iterations_per_epoch: int = Field(50, ge=1, description="a history row, a checkpoint and a progress line")
    bn_weight: float = Field(
        1.0, ge=0, description="match the teacher's batch-norm statistics on generated images (DeepInversion); 0 = off"
    )
    balance_weight: float = Field(
        1.0, ge=0, description="keep the teacher's mean prediction over a batch spread over classes (DAFL); 0 = off"
    )
    confidence_weight: float = Field(
        0.0,
        ge=0,
        description="make each generated image one the teacher classifies confidently (DAFL's one-hot term: its "
        "cross-entropy to its own top class); with balance_weight every class gets clear examples; 0 = off",
    )
    student_ema: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="decay of an exponential moving average of the student's weights and BN buffers, updated after "
        "every student step; the average is the model reported and saved (no real image can select an epoch, and "
        "the student's accuracy swings between blocks as the generator moves), e.g. 0.999; 0 = the final weights",
    )
    memory_limit_mb: int | None = Field(
        None, ge=1, description="refuse a generator whose training needs more; default the machine's memory limit"
    )
