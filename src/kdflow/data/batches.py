"""Batches from uint8 splits (in memory or on disk): seeded order, DDP shards, views, mixing, normalization.

The views (RandomCrop(padding) or RandomResizedCrop, flip; the evaluation crop) live in
:mod:`kdflow.data.views`, with explicit per-sample parameters so a teacher cache can store the view each
sample was shown.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from kdflow.data.mixing import MixParams, apply_mix, draw_mix, mixed_targets
from kdflow.data.pixels import DiskImages
from kdflow.data.views import apply_augmentation, apply_views, draw_augmentation, draw_views, view_size


@dataclass
class Split:
    x: torch.Tensor | DiskImages  # uint8, N x C x H x W (in memory, or rows of the pixel store)
    y: torch.Tensor  # int64, N

    def __len__(self) -> int:
        return int(self.y.shape[0])


def stream_seed(seed: int, index: int) -> int:
    """The seed of random stream ``index`` (an epoch's batch order and augmentation, a cached view)."""
    return seed * 1_000_003 + index


def augment_batch(x: torch.Tensor, padding: int, hflip: bool, gen: torch.Generator) -> torch.Tensor:
    """RandomCrop(padding) + RandomHorizontalFlip on a uint8 batch, vectorised, driven by ``gen``."""
    return apply_augmentation(x, draw_augmentation(len(x), padding, hflip, gen), padding)


class Normalizer:
    """(x - mean) / std per channel of an image batch on the 0-255 scale (``scale`` 255, the statistics on the 0-1
    scale), or per column of a batch of feature rows (``scale`` 1, the statistics in the features' own units; per
    element when a view is shaped as an image)."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], scale: float = 255.0):
        self.mean = torch.tensor(mean) * scale
        self.inv_std = 1.0 / (torch.tensor(std) * scale)

    def __call__(self, x_uint8: torch.Tensor) -> torch.Tensor:
        per_element = self.mean.numel() == x_uint8[0].numel() != x_uint8.shape[1]  # a feature view as an image
        shape = (1, *x_uint8.shape[1:]) if per_element else (1, -1) + (1,) * (x_uint8.dim() - 2)
        if x_uint8.device != self.mean.device or self.mean.dim() != len(shape):
            self.mean = self.mean.to(x_uint8.device).reshape(shape)
            self.inv_std = self.inv_std.to(x_uint8.device).reshape(shape)
        # one float copy (never the caller's tensor, which may be a float split), normalised in place
        return x_uint8.to(torch.float32, copy=True).sub_(self.mean).mul_(self.inv_std)


def shard(order: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """DistributedSampler's rule: pad by wrapping to a multiple of world, then take every world-th index."""
    n = len(order)
    per = -(-n // world)
    padded = torch.cat([order, order[: per * world - n]]) if per * world > n else order
    return padded[rank::world]


@dataclass
class BatchPlan:
    """One batch decided in the main process (order, augmentation and mix draws from the seeded stream), so the
    images can be read and augmented anywhere (a DataLoader worker) with the same result."""

    idx: torch.Tensor
    params: torch.Tensor | None  # per-sample augmentation (N x 3), None: the images as stored
    mix: MixParams | None = None
    partner_params: torch.Tensor | None = None


def load_batch(x, plan: BatchPlan, spec: dict | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The plan's images (and its mix partners'), read and given their views: uint8 batches."""

    def view(rows: torch.Tensor, params: torch.Tensor | None) -> torch.Tensor:
        return apply_views(x[rows], params, spec)

    partner = view(plan.mix.partner, plan.partner_params) if plan.mix is not None else None
    return view(plan.idx, plan.params), partner


def _worker_init(_: int) -> None:
    from kdflow.infra.allocator import return_freed_memory

    return_freed_memory()


class _PlannedBatches(torch.utils.data.Dataset):
    def __init__(self, x, plans: list[BatchPlan], spec: dict | None):
        self.x, self.plans, self.spec = x, plans, spec

    def __len__(self) -> int:
        return len(self.plans)

    def __getitem__(self, i: int):
        return load_batch(self.x, self.plans[i], self.spec)


def iterate(
    split: Split,
    batch_size: int,
    normalizer: Normalizer,
    *,
    shuffle: bool = False,
    augment: dict | None = None,
    seed: int = 0,
    drop_last: bool = False,
    rank: int = 0,
    world: int = 1,
    views: torch.Tensor | None = None,
    mix: dict | None = None,
    mix_views: MixParams | None = None,
    workers: int = 0,
    device: torch.device | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield (normalized float batch, labels, sample indices). Same seed -> same batches.

    With ``world > 1`` every rank draws the same permutation and keeps its shard; augmentation then
    uses a per-rank stream so ranks do not share crop offsets. ``views`` (N x 3 per-sample augmentation
    parameters, e.g. from a teacher cache) replaces the random augmentation: each sample gets exactly
    the view stored for it. ``mix`` ({kind, alpha, num_classes}) mixes every sample with a partner and
    yields mixed soft targets (N x C) instead of labels; ``mix_views`` fixes the partners and weights
    per train-set index (a teacher cache stores them), else they are drawn from the same seeded stream.

    Every draw happens here, in order, before any image is read; ``workers`` > 0 then reads and augments the
    batches in that many DataLoader worker processes (a split on disk overlaps its reads with training), with
    batches identical to ``workers=0``. ``device`` (CUDA) takes the uint8 batch through pinned memory and
    normalizes it there (a quarter of the bytes of a float copy).
    """
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(split), generator=gen) if shuffle else torch.arange(len(split))
    if world > 1:
        order = shard(order, rank, world)
        gen = torch.Generator().manual_seed(seed * 7919 + rank + 1)
    n = len(order)
    stop = n - (n % batch_size) if drop_last and n > batch_size else n
    stored = tuple(int(d) for d in split.x.shape[-2:])
    hw = view_size(augment, stored)

    def params_for(sample_idx: torch.Tensor) -> torch.Tensor | None:
        if views is not None:
            return views[sample_idx]
        return draw_views(len(sample_idx), augment, stored, gen)

    def plan(idx: torch.Tensor) -> BatchPlan:
        p = BatchPlan(idx, params_for(idx))
        if mix:
            p.mix = (
                mix_views.take(idx)
                if mix_views is not None
                else draw_mix(len(idx), len(split), mix["kind"], mix["alpha"], hw, gen)
            )
            p.partner_params = params_for(p.mix.partner)
        return p

    plans = [plan(order[start : start + batch_size]) for start in range(0, stop, batch_size)]
    cuda = device is not None and torch.device(device).type == "cuda"
    loaded: Iterable[tuple[torch.Tensor, torch.Tensor | None]]
    if workers > 0 and len(plans) > 1:
        loaded = torch.utils.data.DataLoader(
            _PlannedBatches(split.x, plans, augment),
            batch_size=None,
            shuffle=False,
            num_workers=min(workers, len(plans)),
            pin_memory=cuda,
            prefetch_factor=4,
            worker_init_fn=_worker_init,
        )
    else:
        loaded = (load_batch(split.x, p, augment) for p in plans)
    for p, (xu8, partner_u8) in zip(plans, loaded, strict=True):
        if cuda:
            xu8 = xu8.to(device, non_blocking=True)
            partner_u8 = partner_u8.to(device, non_blocking=True) if partner_u8 is not None else None
        xb, yb = normalizer(xu8), split.y[p.idx]
        if p.mix is not None and partner_u8 is not None:
            xb = apply_mix(xb, normalizer(partner_u8), p.mix.to(xb.device), mix["kind"])  # type: ignore[index]
            yb = mixed_targets(yb, split.y[p.mix.partner], p.mix.lam, mix["num_classes"])  # type: ignore[index]
        yield xb, (yb.to(device, non_blocking=True) if cuda else yb), p.idx


def num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    if drop_last and n > batch_size:
        return n // batch_size
    return (n + batch_size - 1) // batch_size
