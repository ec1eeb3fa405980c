"""Datasets of named inputs (rows of features, not images) at prep: the rows completed once the splits are
carved, their per-column normalisation, and the manifest's ``inputs``.

- ``multiview-digits`` (:mod:`kdflow.data.multiview`): six feature views, complete when read.
- ``wordnet-supersense`` (:mod:`kdflow.data.text`): token rows are read and split first; the MiniLM
  embedding (``view:minilm``) is then computed for the kept rows only (the expensive forward, kept on disk).
"""

from __future__ import annotations

from pathlib import Path

import torch

from kdflow.config import DataConfig
from kdflow.data.batches import Split
from kdflow.data.multiview import column_stats


def complete(cfg: DataConfig, splits: dict[str, Split], cache_dir: Path) -> dict[str, Split]:
    """Each split's rows with every input (the text embeddings appended to the token rows)."""
    if cfg.dataset != "wordnet-supersense":
        return splits
    from kdflow.data.text import embed

    cache = cache_dir / "text-embeddings"
    rows = [sp.x for sp in splits.values() if isinstance(sp.x, torch.Tensor)]  # named inputs live in memory
    assert len(rows) == len(splits)
    vectors = embed(torch.cat(rows), cache).split([len(x) for x in rows])  # one pass (and one load) for all
    return {
        name: Split(torch.cat([x, v], 1).contiguous(), sp.y)
        for (name, sp), x, v in zip(splits.items(), rows, vectors, strict=True)
    }


def stats(cfg: DataConfig, train_x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-column mean and std over train; token ids and masks are categorical: left as they are (0, 1)."""
    mean, std = column_stats(train_x)
    if cfg.dataset == "wordnet-supersense":
        n = 2 * cfg.max_tokens
        mean, std = (0.0,) * n + mean[n:], (1.0,) * n + std[n:]
    return mean, std


def inputs(cfg: DataConfig) -> dict[str, dict]:
    if cfg.dataset == "wordnet-supersense":
        from kdflow.data.text import layout, vocab_size

        return layout(cfg.max_tokens, vocab_size())
    from kdflow.data.multiview import layout as views

    return views()
