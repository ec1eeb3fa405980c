"""torch DDP under torchrun: gloo on CPU, NCCL on CUDA. Rank 0 alone logs and writes.

Rule for the batch: ``train.batch_size`` is the GLOBAL batch; each of W processes takes
``batch_size / W`` samples per step, so the optimizer sees the same batch and the learning rate is
left unchanged ("no scaling: global batch fixed").
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

LR_SCALING_RULE = "none (global batch fixed across world sizes)"


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def info_from_env() -> DistInfo:
    return DistInfo(
        int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))
    )


def init(device: torch.device) -> DistInfo:
    """Initialise the process group when torchrun started us (idempotent)."""
    info = info_from_env()
    if info.enabled and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
    return info
