"""Evaluation: classification metrics (scikit-learn), teacher agreement, calibration, speed, plots."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from kdflow.config import EvaluateConfig
from kdflow.data.prepared import Normalizer, PreparedData, Split, iterate
from kdflow.infra.io import atomic_write_bytes


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    split: Split,
    normalizer: Normalizer,
    batch_size: int = 512,
    device: torch.device | None = None,
    channels_last: bool = False,
) -> torch.Tensor:
    """fp32 logits of ``model`` (in eval mode for the call) over a whole split, on the CPU."""
    device = device or torch.device("cpu")
    was_training = model.training
    model.eval()
    outs = []
    for xb, _, _ in iterate(split, batch_size, normalizer):
        xb = xb.to(device)
        if channels_last and xb.dim() == 4:
            xb = xb.contiguous(memory_format=torch.channels_last)
        outs.append(model(xb).float().cpu())
    model.train(was_training)
    return torch.cat(outs) if outs else torch.empty(0)


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy, the one definition every step, the trainer and export use."""
    return int((logits.argmax(1) == y).sum()) / len(y) if len(y) else 0.0


def final_and_val_selected_accuracy(
    model: nn.Module, best_state: dict | None, prepared: PreparedData
) -> tuple[float, float | None]:
    """Test accuracy of the final weights (the headline) and of the val-selected ones (reported apart)."""
    norm = prepared.normalizer()
    final = accuracy(predict_logits(model, prepared.test, norm), prepared.test.y)
    if best_state is None:
        return final, None
    final_state = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    selected = accuracy(predict_logits(model, prepared.test, norm), prepared.test.y)
    model.load_state_dict(final_state)
    return final, selected


def classification_metrics(logits: torch.Tensor, y: torch.Tensor, num_classes: int, ece_bins: int = 15) -> dict:
    # scikit-learn, imported here (0.7 s in a step process that has torch; torchmetrics' import took 3.4 s,
    # which every evaluate paid); tests/test_metrics.py checks every figure against torchmetrics.
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    probs = logits.float().softmax(1)
    pred, truth = probs.argmax(1).numpy(), y.numpy()
    seen = sorted(set(truth.tolist()) | set(pred.tolist()))  # macro over the classes in targets or predictions
    precision, recall, f1, _ = precision_recall_fscore_support(
        truth, pred, labels=seen, average="macro", zero_division=0
    )
    confusion = confusion_matrix(truth, pred, labels=list(range(num_classes)))
    support = confusion.sum(1)
    return {
        "accuracy": accuracy(logits, y),
        "precision_macro": float(precision),
        "recall_macro": float(recall),
        "f1_macro": float(f1),
        "per_class_accuracy": [float(c / s) if s else 0.0 for c, s in zip(confusion.diagonal(), support, strict=True)],
        "confusion_matrix": confusion.tolist(),
        "nll": float(F.cross_entropy(logits.float(), y)),
        "ece": expected_calibration_error(probs, y, ece_bins),
    }


def expected_calibration_error(probs: torch.Tensor, y: torch.Tensor, bins: int) -> float:
    """Top-label ECE (L1) over ``bins`` equal-width confidence bins: sum of |accuracy - confidence| weighted
    by each bin's share of the samples (Guo et al. 2017; the binning torchmetrics uses)."""
    confidence, pred = probs.max(1)
    correct = (pred == y).float()
    edges = torch.linspace(0, 1, bins + 1, dtype=confidence.dtype)
    index = (torch.bucketize(confidence, edges, right=True) - 1).clamp(0, bins - 1)
    count = torch.zeros(bins).index_add_(0, index, torch.ones_like(confidence))
    acc = torch.zeros(bins).index_add_(0, index, correct)
    conf = torch.zeros(bins).index_add_(0, index, confidence)
    filled = count > 0
    gap = (acc[filled] / count[filled] - conf[filled] / count[filled]).abs()
    return float((gap * count[filled] / len(y)).sum())


def teacher_comparison(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    teacher_targets: torch.Tensor | None = None,
) -> dict:
    """Top-1 agreement and KL(teacher || student) at T (the seed's soft-target loss), batchmean.
    ``teacher_targets``: the teacher's distribution at T when it is not softmax(logits / T) (an ensemble's
    ``mean_probs`` averages its members' distributions at T)."""
    log_p_s = F.log_softmax(student_logits.float() / temperature, 1)
    p_t = teacher_targets if teacher_targets is not None else F.softmax(teacher_logits.float() / temperature, 1)
    return {
        "agreement_with_teacher": float((student_logits.argmax(1) == teacher_logits.argmax(1)).float().mean()),
        "kl_teacher_student": float(F.kl_div(log_p_s, p_t, reduction="batchmean")),
    }


def transfer_rate(acc_kd: float, acc_scratch: float, acc_teacher: float) -> float | None:
    """(acc_kd - acc_scratch) / (acc_teacher - acc_scratch); None when the teacher is not better."""
    gap = acc_teacher - acc_scratch
    if gap <= 1e-9:
        return None
    return (acc_kd - acc_scratch) / gap


def retention(acc_student: float, acc_teacher: float) -> float:
    return acc_student / acc_teacher if acc_teacher > 0 else 0.0


def time_callable(fn, warmup: int, repeats: int) -> np.ndarray:
    for _ in range(warmup):
        fn()
    times = np.empty(repeats)
    for i in range(repeats):
        t0 = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - t0
    return times


def steady_p95_ms(rounds: list[np.ndarray]) -> float:
    """The p95 of the least disturbed round: a process sharing the cores inflates some rounds, rarely all,
    so the minimum over rounds of each round's p95 keeps the model's own tail and drops the neighbour's."""
    return float(min(np.percentile(r, 95) for r in rounds))


def speed_profile(
    run_batch, input_shape: tuple[int, ...], cfg: EvaluateConfig, example: torch.Tensor | None = None
) -> dict:
    """Latency at batch 1 (ms) and throughput (img/s) at cfg.throughput_batch of ``run_batch(x)``.

    Latency runs ``cfg.latency_rounds`` rounds, each after its own warm-up: p50/p95 are over every timing
    (what a user sees on this machine now); ``latency_p95_ms_steady`` (:func:`steady_p95_ms`) is what the
    release gate reads, so a CPU-bound neighbour does not flip its verdict. ``example``: a batch of real
    (normalised) inputs to time on instead of random ones.
    """
    if example is not None and len(example):  # real rows: inputs such as token ids have no random stand-in
        one, big = example[:1], example[torch.arange(cfg.throughput_batch) % len(example)]
    else:
        one, big = torch.randn(1, *input_shape), torch.randn(cfg.throughput_batch, *input_shape)
    per_round = max(1, cfg.latency_repeats // cfg.latency_rounds)
    rounds = [
        time_callable(lambda: run_batch(one), cfg.latency_warmup, per_round) * 1000.0 for _ in range(cfg.latency_rounds)
    ]
    lat = np.concatenate(rounds)
    thr = time_callable(lambda: run_batch(big), 2, cfg.throughput_repeats)
    return {
        "latency_p50_ms": float(np.percentile(lat, 50)),
        "latency_p95_ms": float(np.percentile(lat, 95)),
        "latency_p95_ms_steady": steady_p95_ms(rounds),
        "throughput_ips": float(cfg.throughput_batch / np.median(thr)),
        "threads": torch.get_num_threads(),
    }


def torch_speed(
    model: nn.Module, input_shape: tuple[int, ...], cfg: EvaluateConfig, example: torch.Tensor | None = None
) -> dict:
    model.eval()

    @torch.inference_mode()
    def run(x):
        return model(x)

    return speed_profile(run, input_shape, cfg, example)


# ----------------------------------------------------------------------------- plots


def save_figure(fig, path: Path) -> Path:
    """Render to memory, then write atomically: a plot is complete or absent, never half-written."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    pyplot().close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(cm: list[list[int]], class_names: list[str], title: str, path: Path) -> Path:
    plt = pyplot()
    a = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(7, 6))
    im = ax.imshow(a, cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(class_names)), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            ax.text(
                j,
                i,
                str(a[i, j]),
                ha="center",
                va="center",
                fontsize=6,
                color="white" if a[i, j] > a.max() / 2 else "black",
            )
    ax.set_title(title)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return save_figure(fig, path)


def reliability_bins(logits: torch.Tensor, y: torch.Tensor, n_bins: int) -> list[dict]:
    probs = logits.float().softmax(1)
    conf, pred = probs.max(1)
    correct = (pred == y).float()
    edges = torch.linspace(0, 1, n_bins + 1)
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            rows.append(
                {
                    "lo": float(lo),
                    "hi": float(hi),
                    "confidence": float(conf[m].mean()),
                    "accuracy": float(correct[m].mean()),
                    "count": int(m.sum()),
                }
            )
    return rows


def plot_reliability(curves: dict[str, list[dict]], path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    for name, rows in curves.items():
        ax.plot([r["confidence"] for r in rows], [r["accuracy"] for r in rows], marker="o", ms=3, label=name)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title("Reliability diagram (test)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_history(histories: dict[str, list[dict]], path: Path) -> Path:
    plt = pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for name, hist in histories.items():
        if not hist:
            continue
        ep = [h["epoch"] for h in hist]
        a1.plot(ep, [h["total"] for h in hist], marker="o", ms=3, label=name)
        validated = [h for h in hist if h.get("val_acc") is not None]  # a data-free run may have no val split
        a2.plot([h["epoch"] for h in validated], [h["val_acc"] for h in validated], marker="o", ms=3, label=name)
    a1.set_xlabel("epoch")
    a1.set_ylabel("training loss")
    a2.set_xlabel("epoch")
    a2.set_ylabel("val accuracy")
    for a in (a1, a2):
        a.legend(fontsize=8)
        a.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)
