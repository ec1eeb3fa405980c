"""Batches from preloaded uint8 tensors: seeded order, DDP shards, batched augmentation, normalization.

Augmentation is RandomCrop(padding) + horizontal flip as tensor ops on a whole batch, with explicit
per-sample parameters so a teacher cache can store the view each sample was shown.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kdflow.data.mixing import MixParams, apply_mix, draw_mix, mixed_targets


@dataclass
class Split:
    x: torch.Tensor  # uint8, N x C x H x W
    y: torch.Tensor  # int64, N

    def __len__(self) -> int:
        return int(self.y.shape[0])


def stream_seed(seed: int, index: int) -> int:
    """The seed of random stream ``index`` (an epoch's batch order and augmentation, a cached view)."""
    return seed * 1_000_003 + index


def draw_augmentation(b: int, padding: int, hflip: bool, gen: torch.Generator) -> torch.Tensor:
    """Per-sample augmentation parameters (row offset, column offset, flip) as a (b, 3) int tensor."""
    i = torch.randint(0, 2 * padding + 1, (b,), generator=gen) if padding > 0 else torch.zeros(b, dtype=torch.long)
    j = torch.randint(0, 2 * padding + 1, (b,), generator=gen) if padding > 0 else torch.zeros(b, dtype=torch.long)
    flip = (torch.rand(b, generator=gen) < 0.5).long() if hflip else torch.zeros(b, dtype=torch.long)
    return torch.stack([i, j, flip], dim=1)


def apply_augmentation(x: torch.Tensor, params: torch.Tensor, padding: int) -> torch.Tensor:
    """RandomCrop(padding) + horizontal flip of a uint8 batch with explicit per-sample parameters."""
    b, c, h, w = x.shape
    if padding > 0:
        xp = F.pad(x, (padding, padding, padding, padding))
        rows = (params[:, 0, None] + torch.arange(h))[:, None, :, None]
        cols = (params[:, 1, None] + torch.arange(w))[:, None, None, :]
        x = xp[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
    flip = params[:, 2].bool()
    if flip.any():
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x


def augment_batch(x: torch.Tensor, padding: int, hflip: bool, gen: torch.Generator) -> torch.Tensor:
    """RandomCrop(padding) + RandomHorizontalFlip on a uint8 batch, vectorised, driven by ``gen``."""
    return apply_augmentation(x, draw_augmentation(len(x), padding, hflip, gen), padding)


class Normalizer:
    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        self.mean = torch.tensor(mean).view(1, -1, 1, 1) * 255.0
        self.inv_std = 1.0 / (torch.tensor(std).view(1, -1, 1, 1) * 255.0)

    def __call__(self, x_uint8: torch.Tensor) -> torch.Tensor:
        return (x_uint8.float() - self.mean) * self.inv_std


def shard(order: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """DistributedSampler's rule: pad by wrapping to a multiple of world, then take every world-th index."""
    n = len(order)
    per = -(-n // world)
    padded = torch.cat([order, order[: per * world - n]]) if per * world > n else order
    return padded[rank::world]


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
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield (normalized float batch, labels, sample indices). Same seed -> same batches.

    With ``world > 1`` every rank draws the same permutation and keeps its shard; augmentation then
    uses a per-rank stream so ranks do not share crop offsets. ``views`` (N x 3 per-sample augmentation
    parameters, e.g. from a teacher cache) replaces the random augmentation: each sample gets exactly
    the view stored for it. ``mix`` ({kind, alpha, num_classes}) mixes every sample with a partner and
    yields mixed soft targets (N x C) instead of labels; ``mix_views`` fixes the partners and weights
    per train-set index (a teacher cache stores them), else they are drawn from the same seeded stream.
    """
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(split), generator=gen) if shuffle else torch.arange(len(split))
    if world > 1:
        order = shard(order, rank, world)
        gen = torch.Generator().manual_seed(seed * 7919 + rank + 1)
    n = len(order)
    stop = n - (n % batch_size) if drop_last and n > batch_size else n
    pad = augment.get("crop_padding", 0) if augment else 0

    def augmented(sample_idx: torch.Tensor) -> torch.Tensor:
        xb = split.x[sample_idx]
        if views is not None:
            return apply_augmentation(xb, views[sample_idx], pad)
        if augment and augment.get("enabled"):
            return augment_batch(xb, pad, augment.get("hflip", False), gen)
        return xb

    for start in range(0, stop, batch_size):
        idx = order[start : start + batch_size]
        xb, yb = normalizer(augmented(idx)), split.y[idx]
        if mix:
            mp = (
                mix_views.take(idx)
                if mix_views is not None
                else draw_mix(len(idx), len(split), mix["kind"], mix["alpha"], tuple(xb.shape[-2:]), gen)
            )
            xb = apply_mix(xb, normalizer(augmented(mp.partner)), mp, mix["kind"])
            yb = mixed_targets(yb, split.y[mp.partner], mp.lam, mix["num_classes"])
        yield xb, yb, idx


def num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    if drop_last and n > batch_size:
        return n // batch_size
    return (n + batch_size - 1) // batch_size
