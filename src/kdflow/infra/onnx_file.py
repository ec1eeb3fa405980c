"""An ONNX file given as the teacher, read and checked before anything is written.

Every failure is one line naming the file: not ONNX, an input that is not an image batch of the data's
channels and size, an output that is not one score per class. Whether it outputs probabilities is
found here, on a seeded batch, and kept in the teacher (see :mod:`kdflow.models.onnx_teacher`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from kdflow.errors import CheckpointError, ModelError
from kdflow.models.onnx_teacher import OnnxTeacher


def is_onnx(source: str | Path) -> bool:
    return str(source).lower().endswith(".onnx")


def open_onnx(path: Path, num_classes: int, in_channels: int, field: str) -> OnnxTeacher:
    """The file as a teacher whose ONNX Runtime session opens (a valid model); its shapes are not checked."""
    if not path.is_file():
        raise CheckpointError(field, f"'{path}' is not a file", "pass the path of an .onnx file")
    model = OnnxTeacher.from_bytes(path.read_bytes(), num_classes, in_channels)
    try:
        model.session()
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types for any damage
        raise CheckpointError(
            field, f"'{path}' is not a valid ONNX model ({str(e).splitlines()[0][:80]})", "export it again"
        ) from None
    return model


def load_onnx_teacher(path: Path, num_classes: int, input_shape: tuple[int, ...], field: str) -> OnnxTeacher:
    model = open_onnx(path, num_classes, input_shape[0], field)
    inp = model.session().get_inputs()[0]
    dims = list(inp.shape)
    fixed = [d if isinstance(d, int) else None for d in dims]
    if len(dims) != 4 or any(f is not None and f != want for f, want in zip(fixed[1:], input_shape, strict=True)):
        raise ModelError(
            field,
            f"'{path}' takes input {dims}, the data is N x {' x '.join(map(str, input_shape))}",
            "export the teacher for the data's channels and size (data.channels, data.image_size)",
        )
    sample = torch.randn(4, *input_shape, generator=torch.Generator().manual_seed(0))
    try:
        out = model.raw(sample)
    except Exception as e:  # noqa: BLE001
        raise ModelError(
            field, f"'{path}' fails on a data-shaped batch ({str(e).splitlines()[0][:80]})", "check its input"
        ) from None
    if out.dim() != 2 or out.shape[1] != num_classes:
        raise ModelError(
            field,
            f"'{path}' outputs {tuple(out.shape)}, the data has {num_classes} classes",
            "give a teacher with one output per class (its first output), or fine-tune one on the data",
        )
    model.outputs_probabilities = torch.tensor(
        bool((out >= 0).all() and torch.allclose(out.sum(1), torch.ones(len(out)), atol=1e-3))
    )
    return model.eval()
