"""``kdflow predict``: the copyable deployment example. Reads the export manifest for preprocessing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from kdflow.errors import ExportError
from kdflow.infra.io import read_json


def _resolve(model: str) -> tuple[Path, Path]:
    """(model file, its kdflow manifest) for a local export or a registered ONNX model."""
    if model.startswith("models:/"):
        from kdflow.infra.tracking import download_model

        local = download_model(model, "--model")
        onnx_files = sorted(local.rglob("*.onnx"))
        manifests = sorted(local.rglob("*.manifest.json"))
        if not onnx_files or not manifests:
            raise ExportError(
                "--model",
                f"'{model}' holds no ONNX file with a kdflow manifest",
                "register the int8 ONNX model logged by `kdflow export`, or pass an exported file",
            )
        return onnx_files[0], manifests[0]
    p = Path(model)
    if not p.is_file():
        raise ExportError("--model", f"'{model}' not found", "pass an exported .onnx or .torchscript.pt file")
    manifest = p.with_name(p.name + ".manifest.json")
    if not manifest.is_file():
        raise ExportError("--model", f"no manifest beside '{p}'", "use a model written by `kdflow export`")
    return p, manifest


def load_images(paths: list[str], shape: list[int]) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    c, h, w = shape
    out = []
    for p in paths:
        try:
            img = np.asarray(Image.open(p))
        except (FileNotFoundError, UnidentifiedImageError):
            raise ExportError("images", f"'{p}' is not a readable image", "pass PNG or JPEG files") from None
        if img.ndim == 2:
            img = img[None]
        else:
            img = img.transpose(2, 0, 1)
        if tuple(img.shape) != (c, h, w):
            raise ExportError(
                "images",
                f"'{p}' has shape {tuple(img.shape)} (channels, height, width), model wants {(c, h, w)}",
                f"resize to {w}x{h} with {c} channel(s)",
            )
        out.append(img)
    return np.stack(out).astype(np.float32)


def predict_cli(model: str, images: list[str], as_json: bool = False) -> int:
    path, manifest_path = _resolve(model)
    manifest = read_json(manifest_path)
    x = load_images(images, manifest["input_shape"][1:])
    mean = np.asarray(manifest["normalization"]["mean"], np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(manifest["normalization"]["std"], np.float32).reshape(1, -1, 1, 1)
    x = (x / 255.0 - mean) / std
    if manifest["format"] == "torchscript":
        module = torch.jit.load(str(path), map_location="cpu").eval()
        with torch.inference_mode():
            logits = module(torch.from_numpy(x)).numpy()
    else:
        from kdflow.release.export import onnx_session

        session = onnx_session(path)
        logits = session.run(None, {session.get_inputs()[0].name: x})[0]
    probs = torch.from_numpy(logits).float().softmax(1).numpy()
    names = manifest["class_names"]
    for p, row in zip(images, probs, strict=True):
        k = int(row.argmax())
        if as_json:
            print(json.dumps({"image": p, "class": names[k], "index": k, "probability": float(row[k])}))
        else:
            print(f"{p}\t{names[k]}\t{row[k]:.4f}")
    sys.stdout.flush()
    return 0
