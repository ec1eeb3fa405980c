"""One trainer for teacher training, scratch training and distillation; the objective is the difference.

Determinism: the batch order and augmentation of epoch ``e`` come from a generator seeded with
``(seed, e)``, so a run resumed from the checkpoint of epoch ``e-1`` replays exactly what an
uninterrupted run would have done.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from kdflow import distributed
from kdflow.allocator import keep_freed_memory
from kdflow.config import TrainConfig
from kdflow.data import Normalizer, PreparedData, Split, iterate, num_batches
from kdflow.errors import ConfigError, TrainingDiverged
from kdflow.io import atomic_torch_save, safe_torch_load

HISTORY_KEYS = ("epoch", "hard", "soft", "feature", "total", "train_acc", "val_acc", "lr", "seconds")


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)
    best_val_acc: float = 0.0
    best_epoch: int = -1
    best_state: dict | None = None
    resumed_from: int | None = None


class _TrainStep(nn.Module):
    """Student + objective (adapters) as one module, so DDP all-reduces adapter gradients too.

    Teachers live outside the objective's module tree and are therefore never wrapped in DDP.
    """

    def __init__(self, student: nn.Module, objective: nn.Module):
        super().__init__()
        self.student = student
        self.objective = objective

    def forward(self, x, y, epoch: int, teacher_logits=None):
        extra = {} if teacher_logits is None else {"teacher_logits": teacher_logits}
        return self.objective(self.student, x, y, epoch, **extra)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch


def lr_factor(step: int, steps_per_epoch: int, epochs: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine to 0 / step decay / constant. ``step`` counts optimizer steps."""
    warm = int(round(cfg.warmup_epochs * steps_per_epoch))
    if warm > 0 and step < warm:
        return (step + 1) / warm
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "step":
        return cfg.gamma ** (step // (cfg.step_size * steps_per_epoch))
    total = max(1, epochs * steps_per_epoch - warm)
    return 0.5 * (1.0 + math.cos(math.pi * min(step - warm, total) / total))


def build_optimizer(params: list[nn.Parameter], cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                           weight_decay=cfg.weight_decay)


def _autocast(device: torch.device, amp: str):
    if amp == "off":
        return torch.autocast(device.type, enabled=False)
    dtype = torch.bfloat16 if amp == "bf16" or device.type == "cpu" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


@torch.no_grad()
def predict_logits(model: nn.Module, split: Split, normalizer: Normalizer, batch_size: int = 512,
                   device: torch.device | None = None, channels_last: bool = False) -> torch.Tensor:
    device = device or torch.device("cpu")
    was_training = model.training
    model.eval()
    outs = []
    for xb, _, _ in iterate(split, batch_size, normalizer):
        xb = xb.to(device)
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        outs.append(model(xb).float().cpu())
    model.train(was_training)
    return torch.cat(outs) if outs else torch.empty(0)


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(1) == y).float().mean()) if len(y) else 0.0


def collapsed_epochs(history: list[dict], num_classes: int) -> int:
    """Trailing epochs whose val accuracy sits at chance (<= 1.5/C) after an earlier one rose above 2/C.

    A student that fell to one constant prediction (dead units after an oversized step) never comes back
    under a decaying lr: finishing the schedule only spends hours making a 1/C model.
    """
    chance, risen, trailing = 1.5 / num_classes, False, 0
    for row in history:
        if row["val_acc"] > 2.0 / num_classes:
            risen, trailing = True, 0
        elif risen and row["val_acc"] <= chance:
            trailing += 1
        else:
            trailing = 0
    return trailing


def _raise_if_collapsed(history: list[dict], num_classes: int, patience: int, desc: str) -> None:
    if patience and collapsed_epochs(history, num_classes) >= patience:
        best = max(history, key=lambda r: r["val_acc"])
        raise TrainingDiverged(
            "train.lr", f"{desc}: the model collapsed to chance (val_acc {history[-1]['val_acc']:.3f} for {patience} "
            f"epochs up to epoch {history[-1]['epoch']}, after {best['val_acc']:.3f} at epoch {best['epoch']})",
            "lower train.lr or set train.grad_clip (e.g. 5); for DKD lower distill.dkd_beta (e.g. 2); "
            "train.collapse_patience=0 turns this check off")


def fit(student: nn.Module, objective: nn.Module, data: PreparedData, cfg: TrainConfig, *, epochs: int, lr: float,
        out_dir: str | Path, desc: str = "train", resume: bool = True, on_epoch=None,
        teacher_cache=None) -> FitResult:
    """Train ``student`` with ``objective``; checkpoint every epoch to ``out_dir/checkpoint.pt``.

    ``teacher_cache`` (a :class:`kdflow.cache.TeacherCache`) replays the stored augmented views and
    supplies the teacher logits recorded for exactly those views, instead of a live teacher forward.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    if cfg.keep_freed_memory:
        keep_freed_memory()
    device = pick_device(cfg.device)
    dist_info = distributed.init(device)
    if dist_info.enabled:
        device = torch.device("cuda", dist_info.local_rank) if device.type == "cuda" else device
    if cfg.batch_size % dist_info.world:
        raise ConfigError("train.batch_size", f"global batch {cfg.batch_size} does not split over {dist_info.world} processes",
                          "use a batch size divisible by --nproc")
    batch = cfg.batch_size // dist_info.world
    student.to(device)
    objective.to(device)
    if cfg.channels_last:
        student.to(memory_format=torch.channels_last)
    step_module: nn.Module = _TrainStep(student, objective)
    if dist_info.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        step_module = DDP(step_module, device_ids=[dist_info.local_rank] if device.type == "cuda" else None)
    params = [p for p in list(student.parameters()) + list(objective.parameters()) if p.requires_grad]
    optimizer = build_optimizer(params, cfg, lr)
    n_local = -(-len(data.train) // dist_info.world)
    drop_last = n_local > batch
    steps_per_epoch = num_batches(n_local, batch, drop_last)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, steps_per_epoch, epochs, cfg))
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16" and device.type == "cuda")
    normalizer = Normalizer(data.mean, data.std)
    aug = data.manifest.get("augmentation")
    result = FitResult()
    start_epoch = 0
    ckpt_path = out / "checkpoint.pt"
    if resume and ckpt_path.is_file():
        ck = safe_torch_load(ckpt_path, "checkpoint")
        student.load_state_dict(ck["student"])
        objective.load_state_dict(ck["objective"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        scaler.load_state_dict(ck["scaler"])
        result.history, result.best_val_acc, result.best_epoch = ck["history"], ck["best_val_acc"], ck["best_epoch"]
        result.best_state = ck.get("best_state")
        start_epoch = ck["epoch"] + 1
        result.resumed_from = ck["epoch"]

    for epoch in range(start_epoch, epochs):
        t0 = time.perf_counter()
        step_module.train()
        sums: dict[str, float] = {}
        correct = seen = 0
        views = teacher_cache.params_for_epoch(epoch) if teacher_cache is not None else None
        batches = iterate(data.train, batch, normalizer, shuffle=True, augment=aug, seed=epoch_seed(cfg.seed, epoch),
                          drop_last=drop_last, rank=dist_info.rank, world=dist_info.world, views=views)
        bar = tqdm(batches, total=steps_per_epoch, desc=f"{desc} {epoch + 1}/{epochs}", leave=False,
                   mininterval=1.0, dynamic_ncols=True, disable=None if dist_info.is_main else True)
        for bi, (xb, yb, idx) in enumerate(bar):
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            if cfg.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            cached = [teacher_cache.logits_for(idx, epoch).to(device)] if teacher_cache is not None else None
            with _autocast(device, cfg.amp):
                loss, logits, parts = step_module(xb, yb, epoch, cached)
            if not torch.isfinite(loss):
                raise TrainingDiverged("train.lr", f"{desc}: loss became {loss.item()} at epoch {epoch + 1}, batch {bi + 1}",
                                       "lower train.lr, set train.grad_clip, or turn train.amp off")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            n = len(yb)
            seen += n
            correct += int((logits.detach().argmax(1) == yb).sum())
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v) * n
            sums["total"] = sums.get("total", 0.0) + float(loss.detach()) * n
            if bi % 20 == 0:
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}", acc=f"{correct / max(seen, 1):.3f}")
        bar.close()
        if dist_info.enabled:  # report the global loss and accuracy, not rank 0's shard
            keys = sorted(sums)
            t = torch.tensor([seen, correct, *[sums[k] for k in keys]], dtype=torch.float64, device=device)
            torch.distributed.all_reduce(t)
            seen, correct = int(t[0]), int(t[1])
            sums = {k: float(v) for k, v in zip(keys, t[2:].tolist(), strict=True)}
        val_acc = accuracy(predict_logits(student, data.val, normalizer, device=device, channels_last=cfg.channels_last),
                           data.val.y)
        row = {"epoch": epoch + 1, **{k: v / max(seen, 1) for k, v in sums.items()},
               "global_batch": cfg.batch_size, "world_size": dist_info.world,
               "train_acc": correct / max(seen, 1), "val_acc": val_acc,
               "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - t0}
        result.history.append(row)
        if val_acc > result.best_val_acc or result.best_epoch < 0:
            result.best_val_acc, result.best_epoch = val_acc, epoch + 1
            result.best_state = {k: v.detach().cpu().clone() for k, v in student.state_dict().items()}
        if not dist_info.is_main:  # rank 0 alone writes and reports
            _raise_if_collapsed(result.history, data.num_classes, cfg.collapse_patience, desc)
            continue
        atomic_torch_save({"epoch": epoch, "student": student.state_dict(), "objective": objective.state_dict(),
                           "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                           "scaler": scaler.state_dict(), "history": result.history,
                           "best_val_acc": result.best_val_acc, "best_epoch": result.best_epoch,
                           "best_state": result.best_state}, ckpt_path)
        tqdm.write(f"[{desc}] epoch {epoch + 1}/{epochs} loss {row['total']:.4f} train_acc {row['train_acc']:.4f} "
                   f"val_acc {val_acc:.4f} lr {row['lr']:.4g} ({row['seconds']:.1f}s)")
        if on_epoch is not None:
            on_epoch(row)
        _raise_if_collapsed(result.history, data.num_classes, cfg.collapse_patience, desc)
    if cfg.select == "best_val" and result.best_state is not None:
        student.load_state_dict(result.best_state)
    student.to("cpu")
    if cfg.channels_last:
        student.to(memory_format=torch.contiguous_format)
    return result
