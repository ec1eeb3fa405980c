"""``kdflow predict``: the copyable deployment example. Reads the export manifest for preprocessing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from kdflow.data.batches import Normalizer
from kdflow.errors import ExportError
from kdflow.infra.loaders import load_torchscript, read_image, read_json_state


def _resolve(model: str) -> tuple[Path, Path]:
    """(model file, its kdflow manifest) for a local export or a registered ONNX model."""
    if model.startswith("models:/"):
        from kdflow.infra.model_uris import download_model

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
    if p.is_dir():
        raise ExportError(
            "--model", f"'{model}' is a directory", "pass an exported .onnx or .torchscript.pt file in it"
        )
    if not p.is_file():
        raise ExportError("--model", f"'{model}' not found", "pass an exported .onnx or .torchscript.pt file")
    manifest = p.with_name(p.name + ".manifest.json")
    if not manifest.is_file():
        raise ExportError("--model", f"no manifest beside '{p}'", "use a model written by `kdflow export`")
    return p, manifest


def load_images(paths: list[str], shape: list[int], preprocess: dict | None = None) -> np.ndarray:
    """The images as the model's (N, C, H, W) batch on the 0-255 scale (modes and bit depths converted), through
    the evaluation transform prep applied to the test images when the export recorded one (``preprocess``:
    shorter side resized, then the centre crop), so a photo of any size is seen as evaluation saw it."""
    c, h, w = shape
    out = []
    for p in paths:
        img = read_image(p, c)
        if preprocess:
            from kdflow.data.transforms import resize_center_crop

            img = resize_center_crop(img, preprocess["resize_shorter"])
            top, left = (img.shape[1] - h) // 2, (img.shape[2] - w) // 2
            img = img[:, top : top + h, left : left + w].astype(np.float32)
        if tuple(img.shape) != (c, h, w):
            raise ExportError(
                "images",
                f"'{p}' has shape {tuple(img.shape)} (channels, height, width), model wants {(c, h, w)}",
                f"resize to {w}x{h} with {c} channel(s)",
            )
        out.append(img)
    return np.stack(out).astype(np.float32)


def load_rows(paths: list[str], shape: list[int]) -> tuple[np.ndarray, list[str]]:
    """Feature rows (a model on named inputs): each file a CSV (one sample per line, its raw values in the
    input's order) or a .npy array; returns the batch in the model's input shape and a name per row."""
    width = int(np.prod(shape))
    rows, names = [], []
    for p in paths:
        try:
            a = np.load(p) if p.endswith(".npy") else np.loadtxt(p, delimiter=",", ndmin=2, dtype=np.float32)
        except (OSError, ValueError) as e:
            raise ExportError("inputs", f"cannot read '{p}' ({type(e).__name__})", "pass CSV rows or a .npy") from None
        a = np.asarray(a, np.float32).reshape(len(a), -1) if np.ndim(a) > 1 else np.asarray(a, np.float32)[None]
        if a.shape[1] != width:
            raise ExportError(
                "inputs", f"'{p}' has {a.shape[1]} values per row, the model reads {width}", f"give {width} per row"
            )
        rows.append(a)
        names += [f"{p}:{i + 1}" for i in range(len(a))] if len(a) > 1 else [p]
    return np.concatenate(rows).reshape(-1, *shape), names


def load_texts(paths: list[str], text: dict, model_dir: Path) -> tuple[np.ndarray, list[str]]:
    """Each non-empty line of each file, tokenized by prep's own path with the tokenizer shipped beside the
    export: (N, 2, L) ids and attention masks, and the line as its label."""
    from kdflow.data.text import tokenize

    lines = []
    for p in paths:
        try:
            lines += [ln.strip() for ln in Path(p).read_text(encoding="utf-8").splitlines() if ln.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise ExportError("inputs", f"cannot read '{p}' ({type(e).__name__})", "pass UTF-8 text files") from None
    if not lines:
        raise ExportError("inputs", "no text in the given files", "pass files with one text per line")
    return tokenize(lines, int(text["max_tokens"]), model_dir / text["tokenizer"]).numpy(), lines


def predict_cli(model: str, images: list[str], as_json: bool = False) -> int:
    path, manifest_path = _resolve(model)
    manifest = read_json_state(manifest_path, "--model", "re-export the model with `kdflow export`")
    if not isinstance(manifest, dict) or not {"input_shape", "normalization", "class_names", "format"} <= set(manifest):
        raise ExportError("--model", f"'{manifest_path}' is not a kdflow export manifest", "re-export the model")
    if manifest.get("text"):  # a text student: each line of each file is one text
        x, labels = load_texts(images, manifest["text"], manifest_path.parent)
    elif manifest.get("inputs", ["image"]) != ["image"] or manifest["normalization"].get("scale") == "1":
        x, labels = load_rows(images, manifest["input_shape"][1:])  # feature rows of the model's named inputs
    else:
        x, labels = load_images(images, manifest["input_shape"][1:], manifest.get("preprocess")), list(images)
    norm = manifest["normalization"]  # training's own normaliser: per channel, column or element, as it saw them
    scale = 255.0 if norm.get("scale", "pixel/255") == "pixel/255" else 1.0
    x = Normalizer(tuple(norm["mean"]), tuple(norm["std"]), scale)(torch.from_numpy(x)).numpy()
    if manifest["format"] == "torchscript":
        module = load_torchscript(path, "--model")
        with torch.inference_mode():
            logits = module(torch.from_numpy(x)).numpy()
    else:
        from kdflow.release.export import onnx_session

        session = onnx_session(path)
        logits = session.run(None, {session.get_inputs()[0].name: x})[0]
    probs = torch.from_numpy(logits).float().softmax(1).numpy()
    names = manifest["class_names"]
    for p, row in zip(labels, probs, strict=True):
        k = int(row.argmax())
        if as_json:
            print(json.dumps({"image": p, "class": names[k], "index": k, "probability": float(row[k])}))
        else:
            print(f"{p}\t{names[k]}\t{row[k]:.4f}")
    sys.stdout.flush()
    return 0
