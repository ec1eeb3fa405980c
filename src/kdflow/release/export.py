"""Export the bare student (eval mode, no teacher, no adapters) and verify every exported form.

Forms: TorchScript, ONNX fp32 (dynamic batch axis), ONNX int8 (onnxruntime static QDQ quantization,
calibrated on a seeded train subset, per-channel; dynamic quantization for attention graphs and as the
fallback). Each file gets
a ``<file>.manifest.json`` beside it.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from kdflow.config import EvaluateConfig, ExportConfig
from kdflow.data.prepared import Normalizer, PreparedData, Split, iterate
from kdflow.errors import ExportError
from kdflow.evaluation.metrics import accuracy, speed_profile
from kdflow.infra.io import atomic_write_bytes, atomic_write_json, sha256_file

ONNX_INPUT = "input"
ONNX_OUTPUT = "logits"


@contextmanager
def _failures_as_export_error(field: str, problem: str, fix: str) -> Iterator[None]:
    """Any exception inside becomes one ExportError line: ``problem`` names the error type and message."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - the exporter and onnxruntime raise many types
        raise ExportError(field, f"{problem} ({type(e).__name__}: {str(e)[:120]})", fix) from None


def export_onnx(model: nn.Module, input_shape: tuple[int, ...], path: Path, opset: int) -> Path:
    model = model.eval()
    buf = io.BytesIO()
    refusal = (
        "export.opset",
        f"the model cannot be exported at opset {opset}",
        "raise export.opset or replace the unsupported op",
    )
    with _failures_as_export_error(*refusal):
        with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (torch.zeros(1, *input_shape),),
                buf,  # type: ignore[arg-type]
                input_names=[ONNX_INPUT],
                output_names=[ONNX_OUTPUT],
                opset_version=opset,
                dynamo=False,
                dynamic_axes={ONNX_INPUT: {0: "batch"}, ONNX_OUTPUT: {0: "batch"}},
            )
    return atomic_write_bytes(path, buf.getvalue())


def export_torchscript(model: nn.Module, input_shape: tuple[int, ...], path: Path) -> Path:
    with torch.no_grad():
        traced = torch.jit.trace(model.eval(), torch.zeros(1, *input_shape))
    buf = io.BytesIO()
    torch.jit.save(traced, buf)
    return atomic_write_bytes(path, buf.getvalue())


class _Calibration:
    """onnxruntime CalibrationDataReader over normalized train batches."""

    def __init__(self, batches: list[np.ndarray]):
        self._it = iter(batches)

    def get_next(self):
        x = next(self._it, None)
        return None if x is None else {ONNX_INPUT: x}

    def rewind(self):  # pragma: no cover - part of the reader protocol
        pass


def calibration_batches(data: PreparedData, n: int, seed: int) -> list[np.ndarray]:
    if n <= 0 or len(data.train) == 0:
        raise ExportError(
            "export.calibration_samples",
            "the calibration set is empty",
            "set export.calibration_samples > 0 (and keep a non-empty train split)",
        )
    idx = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(seed))[:n]
    sub = Split(data.train.x[idx], data.train.y[idx])
    norm = data.normalizer()
    return [xb.numpy() for xb, _, _ in iterate(sub, 64, norm)]


def quantize_int8(fp32_path: Path, out_path: Path, batches: list[np.ndarray]) -> str:
    """Static QDQ int8, per-channel; falls back to dynamic quantization. Returns the mode used.

    onnxruntime works in a scratch directory (it writes side files such as ``*-inferred.onnx`` beside its
    input); the result is then published atomically, so a full output disk is one clean error and never
    a half-written model or stray file.
    """
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory(prefix="kdflow-int8-") as work:
        source, tmp = Path(work) / "student.onnx", Path(work) / "student.int8.onnx"
        shutil.copyfile(fp32_path, source)
        mode = _quantize(source, tmp, batches)
        atomic_write_bytes(out_path, tmp.read_bytes())
    return mode


def _quantize(fp32_path: Path, target: Path, batches: list[np.ndarray]) -> str:
    import logging

    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    logging.disable(logging.WARNING)  # onnxruntime's advice on the root logger ("consider pre-processing")
    try:
        if _attention_graph(fp32_path):  # static activation ranges through softmax/LayerNorm lost 15 pt on text
            quantize_dynamic(str(fp32_path), str(target), weight_type=QuantType.QInt8)
            return "dynamic (attention graph)"
        try:
            quantize_static(
                str(fp32_path),
                str(target),
                _Calibration(batches),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
            )
            return "static-qdq-per-channel"
        except Exception:  # noqa: BLE001 - fall back, recorded in the manifest
            quantize_dynamic(str(fp32_path), str(target), weight_type=QuantType.QInt8)
            return "dynamic"
    finally:
        logging.disable(logging.NOTSET)


def _attention_graph(path: Path) -> bool:
    """A Transformer's graph (softmax or LayerNorm inside): int8 weights with activations quantised on the fly
    keep its accuracy (the tiny text Transformer: 54.2% vs 54.6% fp32; static QDQ 39.6%)."""
    import onnx

    return any(n.op_type in ("Softmax", "LayerNormalization") for n in onnx.load(str(path)).graph.node)


def onnx_session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    with _failures_as_export_error("model", f"'{path}' is not a valid ONNX model", "re-export it with `kdflow export`"):
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def onnx_runner(session):
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: x.numpy()})[0])

    return run


def torchscript_runner(path: Path):
    module = torch.jit.load(str(path), map_location="cpu").eval()

    @torch.inference_mode()
    def run(x: torch.Tensor) -> torch.Tensor:
        return module(x)

    return run


def logits_over(run, split: Split, normalizer: Normalizer, batch: int = 256) -> torch.Tensor:
    return torch.cat([run(xb).float() for xb, _, _ in iterate(split, batch, normalizer)])


def verify(name: str, run, reference: torch.Tensor, data: PreparedData, eval_cfg: EvaluateConfig) -> dict:
    """Parity with the PyTorch logits, accuracy on the full test split, and speed."""
    norm = data.normalizer()
    logits = logits_over(run, data.test, norm)
    input_shape = tuple(data.test.x.shape[1:])
    out = {
        "max_abs_diff": float((logits - reference).abs().max()),
        "top1_agreement": float((logits.argmax(1) == reference.argmax(1)).float().mean()),
        "accuracy": accuracy(logits, data.test.y),
    }
    example = next(iterate(data.test, 64, norm))[0]  # timed on real rows: token ids have no random stand-in
    out.update(speed_profile(run, input_shape, eval_cfg, example))
    return out


def write_manifest(
    path: Path, *, fmt: str, data: PreparedData, opset: int | None, source_model: str, extra: dict
) -> dict:
    manifest = {
        "format": fmt,
        "file": path.name,
        "sha256": sha256_file(path),
        "size_bytes": path.stat().st_size,
        "input_name": ONNX_INPUT,
        "input_shape": ["batch", *data.manifest["input_shape"]],
        "input_dtype": "float32",
        "normalization": {"mean": list(data.mean), "std": list(data.std), "scale": _scale(data)},
        "inputs": data.manifest.get("deployed_inputs", ["image"]),
        "text": data.manifest.get("deployed_text"),
        "preprocess": preprocess_spec(data.manifest),
        "class_names": data.class_names,
        "opset": opset,
        "source_model": source_model,
        **extra,
    }
    atomic_write_json(path.with_name(path.name + ".manifest.json"), manifest)
    return manifest


def _scale(data: PreparedData) -> str:
    """How a raw input becomes what the statistics describe: pixels /255, feature values as they are."""
    return "pixel/255" if data.manifest.get("input_scale", 255.0) == 255.0 else "1"


def preprocess_spec(data_manifest: dict) -> dict | None:
    """The evaluation transform a raw image needs before the model (what prep did to the test images): the
    shorter side resized to the stored size, then the centre crop; None when prep resized nothing."""
    size = data_manifest.get("image_size")
    if not size:
        return None
    return {"resize_shorter": int(data_manifest.get("store_size") or size), "center_crop": int(size)}


def export_all(
    model: nn.Module,
    data: PreparedData,
    cfg: ExportConfig,
    eval_cfg: EvaluateConfig,
    out_dir: Path,
    source_model: str,
    seed: int = 0,
) -> dict:
    """Write every configured form, verify it, and judge parity. Returns metrics per form plus ``parity_ok``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    input_shape = tuple(data.test.x.shape[1:])
    norm = data.normalizer()
    with torch.inference_mode():
        reference = logits_over(model, data.test, norm)
    results: dict[str, dict] = {}
    fp32 = out_dir / "student.onnx"
    if "onnx" in cfg.formats or "onnx_int8" in cfg.formats:
        export_onnx(model, input_shape, fp32, cfg.opset)
    if "onnx" in cfg.formats:
        session = onnx_session(fp32, torch.get_num_threads())
        results["onnx"] = verify("onnx", onnx_runner(session), reference, data, eval_cfg)
        results["onnx"]["manifest"] = write_manifest(
            fp32,
            fmt="onnx",
            data=data,
            opset=cfg.opset,
            source_model=source_model,
            extra={"exporter": "torch.onnx (torchscript)"},
        )
    if "onnx_int8" in cfg.formats:
        q = out_dir / "student.int8.onnx"
        mode = quantize_int8(fp32, q, calibration_batches(data, cfg.calibration_samples, seed))
        int8 = onnx_runner(onnx_session(q, torch.get_num_threads()))
        results["onnx_int8"] = verify("onnx_int8", int8, reference, data, eval_cfg)
        judged = data.release if data.release is not None and len(data.release) else data.val
        with torch.inference_mode():  # the drop the gate judges: on the release split; test accuracy is reported
            fp32_acc = accuracy(logits_over(model, judged, norm), judged.y)
        results["onnx_int8"]["release_accuracy_drop"] = fp32_acc - accuracy(logits_over(int8, judged, norm), judged.y)
        results["onnx_int8"]["manifest"] = write_manifest(
            q,
            fmt="onnx_int8",
            data=data,
            opset=cfg.opset,
            source_model=source_model,
            extra={"quantization": mode, "calibration_samples": cfg.calibration_samples, "calibration_seed": seed},
        )
    if "torchscript" in cfg.formats:
        ts = out_dir / "student.torchscript.pt"
        export_torchscript(model, input_shape, ts)
        results["torchscript"] = verify("torchscript", torchscript_runner(ts), reference, data, eval_cfg)
        results["torchscript"]["manifest"] = write_manifest(
            ts, fmt="torchscript", data=data, opset=None, source_model=source_model, extra={}
        )
    acc_ref = accuracy(reference, data.test.y)
    problems = []
    for fmt, r in results.items():
        r["size_bytes"] = r["manifest"]["size_bytes"]
        if fmt == "onnx_int8":
            if r["top1_agreement"] < cfg.int8_min_agreement:
                problems.append(f"int8 top-1 agreement {r['top1_agreement']:.4f} < {cfg.int8_min_agreement}")
            if r["release_accuracy_drop"] > cfg.int8_max_accuracy_drop:
                problems.append(
                    f"int8 release-split accuracy drop {r['release_accuracy_drop']:.4f} > {cfg.int8_max_accuracy_drop}"
                )
        elif r["max_abs_diff"] > cfg.parity_atol:
            problems.append(f"{fmt} max |logit diff| {r['max_abs_diff']:.2e} > {cfg.parity_atol}")
    return {"forms": results, "pytorch_accuracy": acc_ref, "parity_ok": not problems, "parity_problems": problems}
