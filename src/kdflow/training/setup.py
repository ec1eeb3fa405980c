"""Setting up one training run: device, DDP, the optimizer over student + adapters, the lr schedule."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from kdflow.config import TrainConfig
from kdflow.data.prepared import Normalizer, PreparedData, num_batches
from kdflow.errors import ConfigError
from kdflow.infra.allocator import keep_freed_memory
from kdflow.training import distributed
from kdflow.training.optim import build_optimizer, lr_factor


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


@dataclass
class TrainState:
    """Everything one training run holds between epochs."""

    student: nn.Module
    objective: nn.Module
    step_module: nn.Module
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    device: torch.device
    dist: distributed.DistInfo
    batch: int  # per process
    drop_last: bool
    steps_per_epoch: int
    normalizer: Normalizer


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 natively here (AVX512-BF16 or AMX): where kdflow's bf16 default pays."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_for(device: torch.device, amp: str):
    if amp == "off":
        return torch.autocast(device.type, enabled=False)
    dtype = torch.bfloat16 if amp == "bf16" or device.type == "cpu" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def setup(
    student: nn.Module, objective: nn.Module, data: PreparedData, cfg: TrainConfig, epochs: int, lr: float
) -> TrainState:
    """Threads, allocator, device and DDP; optimizer over student + adapters; the lr schedule."""
    from kdflow.infra.cpu import fit_threads

    fit_threads(cfg.num_threads)  # train.num_threads, else the CPUs the quota and affinity allow
    if cfg.keep_freed_memory:
        keep_freed_memory()
    device = pick_device(cfg.device)
    dist_info = distributed.init(device)
    if dist_info.enabled:
        device = torch.device("cuda", dist_info.local_rank) if device.type == "cuda" else device
    if cfg.batch_size % dist_info.world:
        raise ConfigError(
            "train.batch_size",
            f"global batch {cfg.batch_size} does not split over {dist_info.world} processes",
            "use a batch size divisible by --nproc",
        )
    batch = cfg.batch_size // dist_info.world
    if device.type == "cpu" and cfg.amp != "off" and not cpu_has_native_bf16():
        print(
            "[kdflow] warning: bf16 autocast on a CPU without native bf16 (avx512_bf16/amx) is emulated and "
            "slower than fp32; set teacher.amp=off (or train.amp=off) on this machine"
        )
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
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, steps_per_epoch, epochs, cfg))
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16" and device.type == "cuda")
    return TrainState(
        student,
        objective,
        step_module,
        params,
        optimizer,
        scheduler,
        scaler,
        device,
        dist_info,
        batch,
        drop_last,
        steps_per_epoch,
        data.normalizer(),
    )
