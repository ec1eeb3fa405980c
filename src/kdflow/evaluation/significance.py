"""Paired comparison of two models on the same examples: is one better than the other beyond chance?"""

from __future__ import annotations

import base64

import numpy as np
import torch


def mcnemar(challenger_correct: torch.Tensor, champion_correct: torch.Tensor) -> dict:
    """Paired comparison on the same examples: the discordant counts and the one-sided exact p-value."""
    from scipy.stats import binomtest

    wins = int((challenger_correct & ~champion_correct).sum())
    losses = int((~challenger_correct & champion_correct).sum())
    p = binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue if wins + losses else 1.0
    return {"challenger_only_correct": wins, "champion_only_correct": losses, "p_value": float(p)}


def pack_correct(correct: torch.Tensor) -> str:
    """Which examples a model got right, as short text (1 bit each: 8,000 images in 1.4 KB) that a study's
    records (Optuna user attributes, JSON) keep beside its accuracy."""
    bits = np.packbits(correct.cpu().numpy().astype(np.uint8))
    return f"{len(correct)}:{base64.b64encode(bits.tobytes()).decode()}"


def unpack_correct(text: str) -> torch.Tensor:
    n, _, packed = text.partition(":")
    bits = np.unpackbits(np.frombuffer(base64.b64decode(packed), dtype=np.uint8))[: int(n)]
    return torch.from_numpy(bits.astype(bool))
