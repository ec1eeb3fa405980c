"""A student's deployment cost: parameters and MACs (static), ONNX batch-1 latency (measured here)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from kdflow.models import zoo as models


def onnx_latency_ms(model: nn.Module, input_shape: tuple[int, ...], repeats: int = 50) -> float:
    """Median batch-1 latency of the model's ONNX export under onnxruntime on this machine."""
    from kdflow.evaluation.metrics import time_callable
    from kdflow.release.export import export_onnx, onnx_runner, onnx_session

    with tempfile.TemporaryDirectory(prefix="kdflow-latency-") as tmp:
        path = export_onnx(model, input_shape, Path(tmp) / "model.onnx", opset=17)
        run = onnx_runner(onnx_session(path, threads=torch.get_num_threads()))
        one = torch.zeros(1, *input_shape)  # the export's own example: valid for token ids too (0 is padding)
        times = time_callable(lambda: run(one), warmup=10, repeats=repeats)
    return float(np.median(times) * 1000.0)


def model_cost(model: nn.Module, input_shape: tuple[int, ...], latency: bool) -> dict[str, float]:
    cost: dict[str, float] = {"params": models.num_parameters(model), "macs": models.count_macs(model, input_shape)}
    if latency:
        cost["latency_ms"] = onnx_latency_ms(model, input_shape)
    return cost
