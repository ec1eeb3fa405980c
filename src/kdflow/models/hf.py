"""Hugging Face image classifiers from a local directory (``hf:<dir>``), never from the hub.

``<dir>`` is what ``save_pretrained`` writes (``config.json`` and ``model.safetensors`` or
``pytorch_model.bin``). The architecture comes from its config with the dataset's classes and channels;
its weights are the pretrained start (see :mod:`kdflow.infra.pretrained`: a new head, an RGB first
convolution summed for grey data). The module returns plain logits like every zoo model, so losses,
feature taps (by module name, under ``net.``), export and evaluation treat it alike. transformers is an
optional extra (``pip install 'kdflow[hf]'``).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from kdflow.errors import ModelError

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class HFImageClassifier(nn.Module):
    state_prefix = "net."  # the wrapped model's tensors, as save_pretrained names them, sit under this prefix

    def __init__(self, directory: str, num_classes: int, in_channels: int):
        super().__init__()
        try:
            from transformers import AutoConfig, AutoModelForImageClassification
        except ImportError:
            raise ModelError("arch", f"'hf:{directory}' needs transformers", "pip install 'kdflow[hf]'") from None
        if not (Path(directory) / "config.json").is_file():
            raise ModelError(
                "arch",
                f"'{directory}' holds no config.json of a Hugging Face model",
                "pass a directory written by save_pretrained (nothing is fetched from the hub)",
            )
        config = AutoConfig.from_pretrained(directory, local_files_only=True)
        config.num_labels = num_classes
        config.id2label = {i: str(i) for i in range(num_classes)}
        config.label2id = {str(i): i for i in range(num_classes)}
        if hasattr(config, "num_channels"):
            config.num_channels = in_channels
        try:
            self.net = AutoModelForImageClassification.from_config(config)
        except ValueError as e:
            raise ModelError("arch", f"'{directory}' is not an image classifier ({str(e)[:80]})", "pass one") from None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(pixel_values=x).logits


def pretrained_file(directory: str) -> Path | None:
    """The weights file of a save_pretrained directory, if it holds one."""
    return next((Path(directory) / f for f in WEIGHT_FILES if (Path(directory) / f).is_file()), None)
