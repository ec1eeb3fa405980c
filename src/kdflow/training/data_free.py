"""Data-free adversarial distillation (DFAD, Fang et al. 2019), with the DAFL/DeepInversion signals.

A generator maps noise to images; the student learns to match the frozen teacher on them (the
``dfad`` soft loss: mean |student - teacher| logits) while the generator learns to make images on
which the two disagree most (the min-max). Optional extra signals for the generator: the teacher's
batch-norm statistics (DeepInversion: generated batches should look like the data the teacher's BN
layers saw), class balance (DAFL: the teacher's mean prediction over a batch should be spread
over the classes) and confidence (DAFL's one-hot term: each image clearly one class to the teacher).
No real image enters the loop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from kdflow.config import Config
from kdflow.config.adversarial import GeneratorConfig
from kdflow.data.batches import Split, stream_seed
from kdflow.errors import ConfigError
from kdflow.evaluation.metrics import accuracy, predict_logits
from kdflow.infra.io import atomic_torch_save, safe_torch_load
from kdflow.training.loss_registry import SOFT_LOSSES
from kdflow.training.optim import build_optimizer, lr_factor
from kdflow.training.setup import pick_device
from kdflow.training.trainer import FitResult, _refuse_if_stale
from kdflow.training.weight_average import weight_average


class Generator(nn.Module):
    """z -> fc -> (2w, s/4, s/4) -> up, conv, BN, LReLU -> up, conv, BN, LReLU -> conv -> sigmoid: [0, 1] pixels."""

    def __init__(self, latent: int, width: int, channels: int, image_size: int):
        super().__init__()
        if image_size % 4:
            raise ConfigError(
                "distill.generator", f"images of side {image_size} are not a multiple of 4", "use 28x28 or 32x32 data"
            )
        self.latent, self.side = latent, image_size // 4
        w = width
        self.fc = nn.Linear(latent, 2 * w * self.side * self.side)
        self.body = nn.Sequential(
            nn.BatchNorm2d(2 * w),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * w, 2 * w, 3, 1, 1, bias=False),
            nn.BatchNorm2d(2 * w),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * w, w, 3, 1, 1, bias=False),
            nn.BatchNorm2d(w),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(w, channels, 3, 1, 1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(len(z), -1, self.side, self.side)
        return torch.sigmoid(self.body(h))


def build_generator(g: GeneratorConfig, channels: int, image_size: int) -> Generator:
    return Generator(g.latent, g.width, channels, image_size)


class BatchNormStatistics:
    """DeepInversion's signal: distance of a batch's per-channel mean/var at each of the teacher's BN
    layers to the running statistics the layer learnt on real data."""

    def __init__(self, teacher: nn.Module):
        self.terms: list[torch.Tensor] = []
        self.layers = [m for m in teacher.modules() if isinstance(m, nn.BatchNorm2d)]
        self.hooks = [m.register_forward_hook(self._hook) for m in self.layers]

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        x = inputs[0].float()
        mean, var = x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=False)
        assert isinstance(module, nn.BatchNorm2d)
        assert module.running_mean is not None and module.running_var is not None
        self.terms.append(
            torch.linalg.vector_norm(mean - module.running_mean) + torch.linalg.vector_norm(var - module.running_var)
        )

    def pop(self) -> torch.Tensor:
        total = torch.stack(self.terms).sum() if self.terms else torch.zeros(())
        self.terms = []
        return total

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()


def teacher_confidence(teacher_logits: torch.Tensor) -> torch.Tensor:
    """DAFL's one-hot term: the teacher's cross-entropy to its own top class, low when each image is clearly one
    class (the balance term alone is met by a batch of ambiguous images whose mean prediction is uniform)."""
    t = teacher_logits.float()
    return F.cross_entropy(t, t.argmax(1))


def class_balance(teacher_logits: torch.Tensor) -> torch.Tensor:
    """DAFL's information-entropy term: minus the entropy of the teacher's mean prediction over the batch."""
    p = F.softmax(teacher_logits.float(), 1).mean(0)
    return (p * torch.log(p.clamp_min(1e-8))).sum()


class DataFreeState:
    """Student, generator, their optimizers and schedules, the batch-norm hooks: one data-free run."""

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        generator: Generator,
        cfg: Config,
        mean: tuple[float, ...],
        std: tuple[float, ...],
    ):
        g, self.cfg = cfg.distill.generator, cfg
        self.device = pick_device(cfg.train.device)
        self.student = student.to(self.device)
        self.teacher = teacher.to(self.device).eval().requires_grad_(False)
        self.generator = generator.to(self.device)
        self.epochs = math.ceil(g.iterations / min(g.iterations_per_epoch, g.iterations))
        per_epoch = min(g.iterations_per_epoch, g.iterations)
        self.opt_s = build_optimizer(list(student.parameters()), cfg.train, cfg.lr_for("student"))
        self.opt_g = torch.optim.Adam(generator.parameters(), lr=g.lr, betas=(0.5, 0.999))
        s_steps = per_epoch * g.student_steps
        self.sched_s = torch.optim.lr_scheduler.LambdaLR(
            self.opt_s, lambda k: lr_factor(k, s_steps, self.epochs, cfg.train)
        )
        self.sched_g = torch.optim.lr_scheduler.LambdaLR(
            self.opt_g, lambda k: lr_factor(k, per_epoch, self.epochs, cfg.train)
        )
        self.mean = torch.tensor(mean).view(1, -1, 1, 1).to(self.device)
        self.std = torch.tensor(std).view(1, -1, 1, 1).to(self.device)
        self.bn = BatchNormStatistics(self.teacher) if g.bn_weight > 0 else None
        self.soft = SOFT_LOSSES[cfg.distill.method].fn
        self.average = weight_average(self.student, g.student_ema)  # the model reported, when on

    def reported(self) -> nn.Module:
        """The student as it will be saved: the weight average when ``student_ema`` is on."""
        return self.average.module if self.average is not None else self.student

    def images(self, z: torch.Tensor) -> torch.Tensor:
        """Generated images, normalised as the models expect."""
        return (self.generator(z) - self.mean) / self.std

    def noise(self, iteration: int, k: int) -> torch.Tensor:
        g = self.cfg.distill.generator
        gen = torch.Generator().manual_seed(stream_seed(stream_seed(self.cfg.train.seed, iteration), k))
        return torch.randn(g.batch, g.latent, generator=gen).to(self.device)

    def state_dict(self) -> dict:
        return {
            "student": self.student.state_dict(),
            "generator": self.generator.state_dict(),
            "opt_s": self.opt_s.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "sched_s": self.sched_s.state_dict(),
            "sched_g": self.sched_g.state_dict(),
            "average": self.average.state_dict() if self.average is not None else None,
        }

    def load_state_dict(self, ck: dict) -> None:
        self.student.load_state_dict(ck["student"])
        self.generator.load_state_dict(ck["generator"])
        self.opt_s.load_state_dict(ck["opt_s"])
        self.opt_g.load_state_dict(ck["opt_g"])
        self.sched_s.load_state_dict(ck["sched_s"])
        self.sched_g.load_state_dict(ck["sched_g"])
        if self.average is not None:
            self.average.load_state_dict(ck["average"])


def student_step(st: DataFreeState, iteration: int, k: int, epoch: int) -> tuple[float, float]:
    """One student step on a generated batch: (loss, agreement with the teacher)."""
    with torch.no_grad():
        x = st.images(st.noise(iteration, k))
        t = st.teacher(x)
    if st.bn is not None:
        st.bn.pop()  # the teacher's statistics on this batch are not the generator's loss
    s = st.student(x)
    loss = st.soft(s, [t], t.argmax(1), st.cfg.distill, epoch)
    st.opt_s.zero_grad(set_to_none=True)
    loss.backward()
    st.opt_s.step()
    st.sched_s.step()
    if st.average is not None:
        st.average.update_parameters(st.student)
    return float(loss.detach()), float((s.detach().argmax(1) == t.argmax(1)).float().mean())


def generator_step(st: DataFreeState, iteration: int, epoch: int) -> dict[str, float]:
    """One generator step: maximise the student-teacher discrepancy (+ BN statistics, + class balance)."""
    g = st.cfg.distill.generator
    x = st.images(st.noise(iteration, g.student_steps))
    t = st.teacher(x)  # parameters frozen; the gradient flows to the generated images
    s = st.student(x)
    discrepancy = st.soft(s, [t], t.argmax(1), st.cfg.distill, epoch)
    bn = st.bn.pop() if st.bn is not None else torch.zeros(())
    balance, confidence = class_balance(t), teacher_confidence(t)
    loss = -discrepancy + g.bn_weight * bn + g.balance_weight * balance + g.confidence_weight * confidence
    grads = torch.autograd.grad(loss, list(st.generator.parameters()))
    st.opt_g.zero_grad(set_to_none=True)
    for p, gr in zip(st.generator.parameters(), grads, strict=True):
        p.grad = gr
    st.opt_g.step()
    st.sched_g.step()
    return {
        "generator": float(loss.detach()),
        "bn": float(bn.detach()),
        "balance": float(balance.detach()),
        "confidence": float(confidence.detach()),
    }


def fit_data_free(
    st: DataFreeState,
    val: Split | None,
    checkpoint: Path,
    fingerprint: dict,
    on_epoch: Callable[[dict], None] | None = None,
    desc: str = "distill_student",
) -> FitResult:
    """The min-max, checkpointed per epoch (a block of ``iterations_per_epoch`` generator steps).

    Validation accuracy, when a val split is given, is reported per epoch and never selects weights.
    """
    g = st.cfg.distill.generator
    per_epoch = min(g.iterations_per_epoch, g.iterations)
    result = FitResult()
    start = 0
    if checkpoint.is_file():
        ck = safe_torch_load(checkpoint, "checkpoint")
        _refuse_if_stale(ck.get("fingerprint"), fingerprint, checkpoint)
        st.load_state_dict(ck["state"])
        result.history, result.resumed_from, start = ck["history"], ck["epoch"], ck["epoch"] + 1
    norm = None
    if val is not None:
        from kdflow.data.batches import Normalizer

        norm = Normalizer(tuple(st.mean.flatten().tolist()), tuple(st.std.flatten().tolist()))
    for epoch in range(start, st.epochs):
        t0 = time.perf_counter()
        st.student.train()
        st.generator.train()
        sums = {"soft": 0.0, "agreement": 0.0, "generator": 0.0, "bn": 0.0, "balance": 0.0, "confidence": 0.0}
        first, last = epoch * per_epoch, min((epoch + 1) * per_epoch, g.iterations)
        for it in tqdm(range(first, last), desc=f"{desc} {epoch + 1}/{st.epochs}", leave=False, mininterval=1.0):
            for k in range(g.student_steps):
                loss, agree = student_step(st, it, k, epoch)
                sums["soft"] += loss / g.student_steps
                sums["agreement"] += agree / g.student_steps
            for key, v in generator_step(st, it, epoch).items():
                sums[key] += v
        n = last - first
        row = {"epoch": epoch + 1, **{k: v / n for k, v in sums.items()}, "total": sums["soft"] / n}
        row["train_acc"] = row.pop("agreement")  # agreement with the teacher on generated images
        if val is not None and norm is not None:
            row["val_acc"] = accuracy(predict_logits(st.reported(), val, norm, device=st.device), val.y)
            if st.average is not None:  # the last weights beside their average
                row["val_acc_last"] = accuracy(predict_logits(st.student, val, norm, device=st.device), val.y)
        row.update(lr=st.opt_s.param_groups[0]["lr"], seconds=time.perf_counter() - t0, iterations=last)
        result.history.append(row)
        atomic_torch_save(
            {"epoch": epoch, "fingerprint": fingerprint, "state": st.state_dict(), "history": result.history},
            checkpoint,
        )
        tqdm.write(
            f"[{desc}] epoch {epoch + 1}/{st.epochs} (generator step {last}/{g.iterations}) student loss "
            f"{row['total']:.4f} agreement {row['train_acc']:.3f}"
            + (f" val_acc {row['val_acc']:.4f}" if "val_acc" in row else " (no val split: not validated)")
            + f" ({row['seconds']:.1f}s)"
        )
        if on_epoch is not None:
            on_epoch(row)
    if st.bn is not None:
        st.bn.remove()
    if st.average is not None:
        st.student.load_state_dict(st.average.module.state_dict())
    st.student.eval().to("cpu")
    st.generator.eval().to("cpu")
    st.teacher.to("cpu")
    st.mean, st.std = st.mean.cpu(), st.std.cpu()
    return result


def plot_samples(generator: Generator, teacher: nn.Module, st: DataFreeState, class_names: list[str], path: Path):
    """A grid of generated images (fixed noise), titled with the teacher's class and confidence."""
    from kdflow.evaluation.metrics import pyplot, save_figure

    with torch.no_grad():
        gen = torch.Generator().manual_seed(12345)
        z = torch.randn(32, generator.latent, generator=gen)
        pixels = generator(z)
        probs = F.softmax(teacher((pixels - st.mean) / st.std).float(), 1)
    plt = pyplot()
    fig, axes = plt.subplots(4, 8, figsize=(12, 6.6))
    for ax, img, p in zip(axes.flat, pixels, probs, strict=True):
        ax.imshow(img.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray" if img.shape[0] == 1 else None, vmin=0, vmax=1)
        c = int(p.argmax())
        ax.set_title(f"{class_names[c][:10]} {float(p[c]):.2f}", fontsize=7)
        ax.axis("off")
    fig.suptitle("Generated images (teacher's class and confidence)")
    fig.tight_layout()
    return save_figure(fig, path)
