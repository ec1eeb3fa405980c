"""Robust accuracy under FGSM and PGD, the robustness curve over eps, and its plot.

Figures are on the first ``adversarial.eval_samples`` of a split (PGD costs steps+1 passes per image).
A model that cannot be differentiated (an ONNX export) is scored on the adversarial examples of its
PyTorch twin (a transfer attack), and the result says so.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

from kdflow.config.adversarial import AdversarialConfig
from kdflow.data.batches import Split
from kdflow.data.prepared import PreparedData
from kdflow.evaluation.attacks import adversarial_batches

Predict = Callable[[torch.Tensor], torch.Tensor]  # normalised batch -> logits


def _accuracy_on(
    model: nn.Module,
    prepared: PreparedData,
    split: Split,
    cfg: AdversarialConfig,
    kind: str,
    eps: float,
    targets: dict[str, Predict] | None = None,
) -> dict[str, float]:
    """Accuracy of ``model`` (and of each of ``targets``, by transfer) on adversarial examples of ``model``."""
    norm = prepared.normalizer()
    targets = {"self": lambda x: model(x), **(targets or {})}
    correct = dict.fromkeys(targets, 0)
    seen = 0
    batches = adversarial_batches(
        model,
        split,
        norm,
        prepared.mean,
        prepared.std,
        kind=kind,
        eps=eps,
        steps=cfg.steps,
        step_size=cfg.pgd_step(eps, cfg.steps),
        random_start=cfg.random_start,
        seed=cfg.seed,
        samples=cfg.eval_samples,
    )
    mean = torch.tensor(prepared.mean).view(1, -1, 1, 1)
    std = torch.tensor(prepared.std).view(1, -1, 1, 1)
    was_training = model.training
    model.eval()
    for x_pix, y in batches:
        x = (x_pix - mean) / std
        with torch.no_grad():
            for name, predict in targets.items():
                correct[name] += int((predict(x).argmax(1) == y).sum())
        seen += len(y)
    model.train(was_training)
    return {name: c / max(seen, 1) for name, c in correct.items()}


def robustness_report(model: nn.Module, prepared: PreparedData, cfg: AdversarialConfig) -> dict:
    """Test-split FGSM and PGD accuracy at ``cfg.eps`` and the PGD curve over ``cfg.curve_eps`` (reported)."""
    test = prepared.test
    radii = sorted({*cfg.curve_eps, cfg.eps})
    curve = {e: _accuracy_on(model, prepared, test, cfg, "pgd", e)["self"] for e in radii}
    return {
        "robust_eps": cfg.eps,
        "robust_steps": cfg.steps,
        "robust_samples": min(cfg.eval_samples, len(test)),
        "fgsm_accuracy": _accuracy_on(model, prepared, test, cfg, "fgsm", cfg.eps)["self"],
        "pgd_accuracy": curve[cfg.eps],
        "robustness_curve": [{"eps": e, "pgd_accuracy": curve[e]} for e in radii if e in cfg.curve_eps],
    }


def release_pgd_accuracy(model: nn.Module, prepared: PreparedData, cfg: AdversarialConfig) -> float | None:
    """PGD accuracy at ``cfg.eps`` on the release split: what ``gate.min_robust_accuracy`` reads (None: no
    release split)."""
    if prepared.release is None or not len(prepared.release):
        return None
    return _accuracy_on(model, prepared, prepared.release, cfg, "pgd", cfg.eps)["self"]


def transfer_pgd_accuracy(
    twin: nn.Module, prepared: PreparedData, cfg: AdversarialConfig, targets: dict[str, Predict]
) -> dict[str, float]:
    """PGD accuracy at ``cfg.eps`` of exports that cannot be differentiated, on their PyTorch twin's examples."""
    scores = _accuracy_on(twin, prepared, prepared.test, cfg, "pgd", cfg.eps, targets)
    return {name: scores[name] for name in targets}


def plot_robustness(curves: dict[str, list[dict]], steps: int, path: Path) -> Path:
    from kdflow.evaluation.metrics import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, rows in curves.items():
        ax.plot([r["eps"] for r in rows], [100 * r["pgd_accuracy"] for r in rows], marker="o", ms=4, label=name)
    ax.set_xlabel("eps (L-inf, [0, 1] pixels)")
    ax.set_ylabel("accuracy under PGD (%)")
    ax.set_title(f"Robustness curve (PGD-{steps}, test subset)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def export_robustness(twin: nn.Module, prepared: PreparedData, cfg: AdversarialConfig, out: Path, forms: dict) -> None:
    """PGD accuracy of each export form, in place: TorchScript attacked directly (it has gradients),
    ONNX forms on the PyTorch twin's adversarial examples (onnxruntime has none: a transfer attack)."""
    from kdflow.release.export import onnx_runner, onnx_session

    files = {"onnx": "student.onnx", "onnx_int8": "student.int8.onnx"}
    transfer = {
        form: onnx_runner(onnx_session(out / files[form], torch.get_num_threads())) for form in files if form in forms
    }
    for form, acc in transfer_pgd_accuracy(twin, prepared, cfg, transfer).items():
        forms[form].update(pgd_accuracy=acc, robust_attack="transfer from the PyTorch twin")
    if "torchscript" in forms:
        scripted = torch.jit.load(str(out / "student.torchscript.pt"), map_location="cpu")
        acc = _accuracy_on(scripted, prepared, prepared.test, cfg, "pgd", cfg.eps)["self"]
        forms["torchscript"].update(pgd_accuracy=acc, robust_attack="white-box")


def load_attackable(path: str, num_classes: int) -> nn.Module:
    """A model an attack can differentiate: a kdflow checkpoint or a TorchScript export; ONNX is refused."""
    from kdflow.errors import ModelError
    from kdflow.infra import checkpoints

    p = Path(path)
    if p.suffix == ".onnx":
        raise ModelError(
            "--model",
            f"'{p.name}' is an ONNX export: onnxruntime computes no input gradients, so it cannot be attacked",
            "attack its PyTorch twin (the distill step's model.pt) or the TorchScript export; the export step "
            "scores ONNX forms on the twin's adversarial examples",
        )
    if p.name.endswith(".torchscript.pt"):
        from kdflow.infra.loaders import load_torchscript

        return load_torchscript(p, "--model")
    return checkpoints.load_model(path, field="--model", expect_classes=num_classes)[0]


def attack_cli(cfg: AdversarialConfig, data_dir: str, model_path: str, out: Path) -> dict:
    """``kdflow attack``: FGSM/PGD accuracy and the curve of one model; robustness.json and .png in ``out``."""
    from kdflow.data.prepared import load_prepared
    from kdflow.infra.io import atomic_write_json

    prepared = load_prepared(data_dir)
    model = load_attackable(model_path, prepared.num_classes)  # refused before anything is written
    report = robustness_report(model, prepared, cfg)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "robustness.json", {"model": model_path, **report})
    plot_robustness({Path(model_path).name: report["robustness_curve"]}, cfg.steps, out / "robustness.png")
    return report
