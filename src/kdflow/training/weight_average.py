"""An exponential moving average of a model's weights and buffers (Polyak averaging), for a student whose
accuracy swings from step to step and that no real image can select an epoch for: the data-free student."""

from __future__ import annotations

import torch.nn as nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


def weight_average(model: nn.Module, decay: float) -> AveragedModel | None:
    """The average to update after every optimizer step (None when ``decay`` is 0: off). BN running statistics
    are averaged with the weights (``use_buffers``), so the averaged model needs no pass over data to be used."""
    if decay <= 0:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
