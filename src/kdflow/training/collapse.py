"""The collapse guard: stop a run whose student fell to one constant answer instead of finishing its schedule."""

from __future__ import annotations

from kdflow.errors import TrainingDiverged


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


def raise_if_collapsed(history: list[dict], num_classes: int, patience: int, desc: str) -> None:
    if patience and collapsed_epochs(history, num_classes) >= patience:
        best = max(history, key=lambda r: r["val_acc"])
        raise TrainingDiverged(
            "train.lr",
            f"{desc}: the model collapsed to chance (val_acc {history[-1]['val_acc']:.3f} for {patience} "
            f"epochs up to epoch {history[-1]['epoch']}, after {best['val_acc']:.3f} at epoch {best['epoch']})",
            "lower train.lr or set train.grad_clip (e.g. 5); for DKD lower distill.dkd_beta (e.g. 2); "
            "train.collapse_patience=0 turns this check off",
        )
