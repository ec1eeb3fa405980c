"""Carving the prepared splits from the raw data: the release split by content, the data window, the seeded val
split and the subsets (see :mod:`kdflow.data.prepared` for what each split is for)."""

from __future__ import annotations

import re

import torch

from kdflow.config import DataConfig
from kdflow.data.batches import Split
from kdflow.data.pixels import take
from kdflow.data.raw import RawData
from kdflow.data.release_split import release_members
from kdflow.errors import DataError


def window_slice(window: str, n: int) -> slice | None:
    """'START:END' selects raw train samples [START, END) (a time window of a growing stream); other text is a label."""
    m = re.fullmatch(r"(\d*):(\d*)", window.strip())
    if not m:
        return None
    start = int(m.group(1) or 0)
    end = int(m.group(2) or n)
    if not 0 <= start < end <= n:
        raise DataError(
            "data.window",
            f"window '{window}' is outside the {n} train samples",
            f"use START:END with 0 <= START < END <= {n}",
        )
    return slice(start, end)


def split_raw(raw: RawData, cfg: DataConfig) -> tuple[Split, Split, Split, Split]:
    """train, val, test and release. Release members (by content, over the whole raw train stream) are taken
    out first; the window then selects from the rest, and val is carved from the window by the split seed."""
    n_raw = len(raw.train_y)
    in_release = release_members(raw.train_x, raw.train_y, cfg.release_fraction, cfg.release_seed)
    release = Split(take(raw.train_x, in_release), raw.train_y[in_release])
    window = window_slice(cfg.window, n_raw) or slice(0, n_raw)
    pool = torch.arange(n_raw)[window]
    pool = pool[~in_release[pool]]
    n = len(pool)
    if cfg.val_size >= n:
        raise DataError(
            "data.val_size",
            f"{cfg.val_size} is not smaller than the {n} train samples (after {int(in_release.sum())} release samples)",
            "lower data.val_size (or data.release_fraction)",
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.split_seed))
    val_idx, train_idx = perm[: cfg.val_size], perm[cfg.val_size :]
    if cfg.train_subset is not None:
        train_idx = train_idx[: cfg.train_subset]
    test = Split(raw.test_x, raw.test_y)
    if cfg.test_subset is not None:
        test = Split(take(raw.test_x, slice(0, cfg.test_subset)), raw.test_y[: cfg.test_subset])
    val_idx, train_idx = pool[val_idx.sort().values], pool[train_idx.sort().values]
    return (
        Split(take(raw.train_x, train_idx), raw.train_y[train_idx]),
        Split(take(raw.train_x, val_idx), raw.train_y[val_idx]),
        test,
        release,
    )


def stratified_mask(y: torch.Tensor, share: float, gen: torch.Generator) -> torch.Tensor:
    """A bool mask over the samples: ``share`` of each class, drawn from ``gen`` (a dataset without an official
    test split)."""
    mask = torch.zeros(len(y), dtype=torch.bool)
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).flatten()
        mask[idx[torch.randperm(len(idx), generator=gen)[: round(share * len(idx))]]] = True
    return mask
