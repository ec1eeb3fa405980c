"""One trainer for teacher training, scratch training and distillation; the objective is the difference.

``fit`` = :func:`setup` (device, DDP, optimizer, schedule), :func:`resume_state` from the last checkpoint,
then per epoch :func:`train_one_epoch`, a validation pass and a checkpoint.

Determinism: the batch order and augmentation of epoch ``e`` come from a generator seeded with
``(seed, e)``, so a run resumed from the checkpoint of epoch ``e-1`` replays exactly what an
uninterrupted run would have done.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from kdflow.config import TrainConfig
from kdflow.data.mixing import hard_labels
from kdflow.data.pixels import loader_workers
from kdflow.data.prepared import PreparedData, iterate, stream_seed
from kdflow.errors import ConfigError, TrainingDiverged
from kdflow.evaluation.metrics import accuracy, predict_logits
from kdflow.infra.fingerprint import differences
from kdflow.infra.io import atomic_torch_save, safe_torch_load
from kdflow.training import precise_bn
from kdflow.training.collapse import collapsed_epochs, raise_if_collapsed
from kdflow.training.optim import build_optimizer, lr_factor
from kdflow.training.setup import TrainState, _TrainStep, autocast_for, pick_device, setup

__all__ = [
    "FitResult",
    "TrainState",
    "build_optimizer",
    "collapsed_epochs",
    "fit",
    "lr_factor",
    "pick_device",
    "resume_state",
    "setup",
    "train_one_epoch",
    "_TrainStep",
]


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)
    best_val_acc: float = 0.0
    best_epoch: int = -1
    best_state: dict | None = None
    resumed_from: int | None = None


def _refuse_if_stale(recorded: dict | None, expected: dict, ckpt_path: Path) -> None:
    """A checkpoint of another config, data, teacher or code version is never resumed."""
    if recorded == expected:
        return
    raise ConfigError(
        "--out",
        f"'{ckpt_path}' is a checkpoint of another run: {differences(recorded, expected)}",
        "pass --fresh to discard it, or choose a new --out",
    )


def check_resumable(ckpt_path: Path, fingerprint: dict) -> None:
    """Refuse a checkpoint of another run before any work (fit checks again when it resumes)."""
    if ckpt_path.is_file():
        _refuse_if_stale(safe_torch_load(ckpt_path, "checkpoint").get("fingerprint"), fingerprint, ckpt_path)


def resume_state(state: TrainState, ckpt_path: Path, result: FitResult, fingerprint: dict | None = None) -> int:
    """Load the last checkpoint into ``state`` and ``result``; returns the epoch to start from.

    With a ``fingerprint`` (what the result depends on), a checkpoint recording another one is refused.
    """
    ck = safe_torch_load(ckpt_path, "checkpoint")
    if fingerprint is not None:
        _refuse_if_stale(ck.get("fingerprint"), fingerprint, ckpt_path)
    state.student.load_state_dict(ck["student"])
    state.objective.load_state_dict(ck["objective"])
    state.optimizer.load_state_dict(ck["optimizer"])
    state.scheduler.load_state_dict(ck["scheduler"])
    state.scaler.load_state_dict(ck["scaler"])
    result.history, result.best_val_acc, result.best_epoch = (ck["history"], ck["best_val_acc"], ck["best_epoch"])
    result.best_state = ck.get("best_state")
    result.resumed_from = ck["epoch"]
    if "rng" in ck:  # dropout and any other global-RNG draw continue exactly where the run stopped
        torch.set_rng_state(ck["rng"])
        if ck.get("cuda_rng") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ck["cuda_rng"])
    return ck["epoch"] + 1


def _optimizer_step(state: TrainState, loss: torch.Tensor, cfg: TrainConfig) -> None:
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(loss).backward()
    if cfg.grad_clip:
        state.scaler.unscale_(state.optimizer)
        torch.nn.utils.clip_grad_norm_(state.params, cfg.grad_clip)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.scheduler.step()


def train_one_epoch(
    state: TrainState, data: PreparedData, cfg: TrainConfig, epoch: int, epochs: int, desc: str, teacher_cache=None
) -> tuple[dict[str, float], int, int]:
    """One pass over this process's shard: (summed loss parts, correct, seen)."""
    state.step_module.train()
    sums: dict[str, float] = {}
    correct = seen = 0
    pooled = data.train.y.dim() == 1 and bool((data.train.y < 0).any())  # the same on every rank (DDP sums keys)
    views = teacher_cache.params_for_epoch(epoch) if teacher_cache is not None else None
    mix = {"kind": cfg.mix, "alpha": cfg.mix_alpha, "num_classes": data.num_classes} if cfg.mix != "none" else None
    mix_views = teacher_cache.mix_for_epoch(epoch) if teacher_cache is not None and mix else None
    batches = iterate(
        data.train,
        state.batch,
        state.normalizer,
        shuffle=True,
        augment=data.manifest.get("augmentation"),
        seed=stream_seed(cfg.seed, epoch),
        drop_last=state.drop_last,
        rank=state.dist.rank,
        world=state.dist.world,
        views=views,
        mix=mix,
        mix_views=mix_views,
        workers=loader_workers(cfg.loader_workers, data.train.x, state.device),
        device=state.device if state.device.type == "cuda" else None,
    )
    bar = tqdm(
        batches,
        total=state.steps_per_epoch,
        desc=f"{desc} {epoch + 1}/{epochs}",
        leave=False,
        mininterval=1.0,
        dynamic_ncols=True,
        disable=None if state.dist.is_main else True,
    )
    for bi, (xb, yb, idx) in enumerate(bar):
        xb, yb = xb.to(state.device, non_blocking=True), yb.to(state.device, non_blocking=True)
        if cfg.channels_last and xb.dim() == 4:  # feature rows have no channels to lay out
            xb = xb.contiguous(memory_format=torch.channels_last)
        cached = (
            None if teacher_cache is None else [t.to(state.device) for t in teacher_cache.teacher_logits(idx, epoch)]
        )
        with autocast_for(state.device, cfg.amp):
            loss, logits, parts = state.step_module(xb, yb, epoch, cached)
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                "train.lr",
                f"{desc}: loss became {loss.item()} at epoch {epoch + 1}, batch {bi + 1}",
                "lower train.lr, set train.grad_clip, or turn train.amp off",
            )
        _optimizer_step(state, loss, cfg)
        n = len(yb)
        seen += n
        labels = hard_labels(yb)
        correct += int((logits.detach().argmax(1) == labels).sum())  # a pool row (label -1) is never a hit
        if pooled:  # train accuracy over the labelled images; the transfer set's have no label
            sums["labelled"] = sums.get("labelled", 0.0) + int((labels >= 0).sum())
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + float(v) * n
        sums["total"] = sums.get("total", 0.0) + float(loss.detach()) * n
        if bi % 20 == 0:
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", acc=f"{correct / max(seen, 1):.3f}")
    bar.close()
    return sums, correct, seen


def _all_reduce(
    state: TrainState, sums: dict[str, float], correct: int, seen: int
) -> tuple[dict[str, float], int, int]:
    """The global loss and accuracy, not rank 0's shard."""
    keys = sorted(sums)
    t = torch.tensor([seen, correct, *[sums[k] for k in keys]], dtype=torch.float64, device=state.device)
    torch.distributed.all_reduce(t)
    return {k: float(v) for k, v in zip(keys, t[2:].tolist(), strict=True)}, int(t[1]), int(t[0])


def _save_checkpoint(state: TrainState, epoch: int, result: FitResult, path: Path, fingerprint: dict | None) -> None:
    atomic_torch_save(
        {
            "epoch": epoch,
            "fingerprint": fingerprint,
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "student": state.student.state_dict(),
            "objective": state.objective.state_dict(),
            "optimizer": state.optimizer.state_dict(),
            "scheduler": state.scheduler.state_dict(),
            "scaler": state.scaler.state_dict(),
            "history": result.history,
            "best_val_acc": result.best_val_acc,
            "best_epoch": result.best_epoch,
            "best_state": result.best_state,
        },
        path,
    )


def _record_epoch(
    state: TrainState,
    data: PreparedData,
    cfg: TrainConfig,
    epoch: int,
    sums: dict[str, float],
    correct: int,
    seen: int,
    seconds_from: float,
    result: FitResult,
) -> dict:
    """Validate, append the epoch's row to the history, and keep the best-val weights."""
    if precise_bn.wanted(cfg.precise_bn, state.student):
        precise_bn.recalibrate(
            state.student,
            data.train,
            state.normalizer,
            data.manifest.get("augmentation"),
            cfg.precise_bn_batches,
            state.batch,
            state.device,
            cfg.channels_last,
        )
    val_acc = accuracy(
        predict_logits(state.student, data.val, state.normalizer, device=state.device, channels_last=cfg.channels_last),
        data.val.y,
    )
    labelled = sums.get("labelled", seen)  # the unlabeled transfer set counts for the losses, not for accuracy
    row = {
        "epoch": epoch + 1,
        **{k: v / max(seen, 1) for k, v in sums.items()},  # "labelled": the labelled share of the images seen
        "global_batch": cfg.batch_size,
        "world_size": state.dist.world,
        "train_acc": correct / max(labelled, 1),
        "val_acc": val_acc,
        "lr": state.optimizer.param_groups[0]["lr"],
        "seconds": time.perf_counter() - seconds_from,
    }
    result.history.append(row)
    if val_acc > result.best_val_acc or result.best_epoch < 0:
        result.best_val_acc, result.best_epoch = val_acc, epoch + 1
        result.best_state = {k: v.detach().cpu().clone() for k, v in state.student.state_dict().items()}
    return row


def fit(
    student: nn.Module,
    objective: nn.Module,
    data: PreparedData,
    cfg: TrainConfig,
    *,
    epochs: int,
    lr: float,
    out_dir: str | Path,
    desc: str = "train",
    resume: bool = True,
    on_epoch: Callable[[dict], None] | None = None,
    teacher_cache=None,
    fingerprint: dict | None = None,
) -> FitResult:
    """Train ``student`` with ``objective``; checkpoint every epoch to ``out_dir/checkpoint.pt``.

    ``teacher_cache`` (a :class:`kdflow.data.cache.TeacherCache`, or an ``EnsembleCache`` of several) replays the stored augmented views and
    supplies the teacher logits recorded for exactly those views, instead of a live teacher forward.
    ``fingerprint`` (what the result depends on) is stored in every checkpoint; a checkpoint recording
    another one is refused instead of resumed.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = setup(student, objective, data, cfg, epochs, lr)
    result = FitResult()
    ckpt_path = out / "checkpoint.pt"
    start = resume_state(state, ckpt_path, result, fingerprint) if resume and ckpt_path.is_file() else 0
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        sums, correct, seen = train_one_epoch(state, data, cfg, epoch, epochs, desc, teacher_cache)
        if state.dist.enabled:
            sums, correct, seen = _all_reduce(state, sums, correct, seen)
        row = _record_epoch(state, data, cfg, epoch, sums, correct, seen, t0, result)
        if state.dist.is_main:  # rank 0 alone writes and reports
            _save_checkpoint(state, epoch, result, ckpt_path, fingerprint)
            tqdm.write(
                f"[{desc}] epoch {epoch + 1}/{epochs} loss {row['total']:.4f} train_acc {row['train_acc']:.4f} "
                f"val_acc {row['val_acc']:.4f} lr {row['lr']:.4g} ({row['seconds']:.1f}s)"
            )
            if on_epoch is not None:
                on_epoch(row)
        raise_if_collapsed(result.history, data.num_classes, cfg.collapse_patience, desc)
    if cfg.select == "best_val" and result.best_state is not None:
        student.load_state_dict(result.best_state)
    student.to("cpu")
    if cfg.channels_last:
        student.to(memory_format=torch.contiguous_format)
    return result
