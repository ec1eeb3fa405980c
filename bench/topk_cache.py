"""Offline KD with top-k teacher logits (FKD, issue #26): cache bytes per view and the student's accuracy.

Fashion-MNIST through kdflow's own steps (tracking off): a cnn-wide teacher (5 epochs, all labels), cnn-small
students distilled from its cache (``distill.cache``, one stored view per epoch) keeping all 10 logits, the
top 3 or the top 1 (``distill.cache_topk``; the other classes share the rest of the softmax mass), the same
seeds paired. Bytes per view are what the cache stores per (image, view), measured; the 1,000-class row is
the same layout computed for an ImageNet teacher. Test accuracy once per final model.

    .venv/bin/python bench/topk_cache.py               # seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import write_section  # noqa: E402
from runs import isolated, seed_list  # noqa: E402

from kdflow import steps  # noqa: E402
from kdflow.config import load_config  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / "_work" / "topk_cache"
SECTION = "Offline cache: top-k teacher logits"
KS = (None, 3, 1)


def config(args, seed: int, extra: list[str] | None = None):
    base = [
        *isolated(WORK),
        "teacher.arch=cnn-wide",
        f"teacher.epochs={args.teacher_epochs}",
        "student.arch=cnn-small",
        f"student.epochs={args.epochs}",
        "distill.cache=true",
        f"train.seed={seed}",
        "evaluate.latency_repeats=5",
    ]
    return load_config(ROOT / "configs" / "fashion_mnist.yaml", None, base + (extra or []))


def _metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def run(args) -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    data_dir, teacher = WORK / "data", WORK / f"teacher-e{args.teacher_epochs}"
    if not (data_dir / "manifest.json").is_file():
        steps.prep(config(args, 0), data_dir)
    if not (teacher / "model.pt").is_file():
        steps.train(config(args, 0), "teacher", data_dir, teacher)
    rows: dict = {k: {} for k in KS}
    for seed in args.seeds:
        for k in KS:
            out = WORK / f"e{args.epochs}-k{k or 'all'}-s{seed}"
            if not (out / "model.pt").is_file():
                extra = [f"distill.cache_topk={k}"] if k else []
                steps.distill(config(args, seed, extra), data_dir, teacher / "model.pt", out)
            rows[k][seed] = _metrics(out)
        report(args, rows, _metrics(teacher)["test_accuracy"])


def report(args, rows: dict, teacher_acc: float) -> None:
    seeds = sorted(set.intersection(*(set(r) for r in rows.values())))
    if not seeds:
        return
    full = rows[None]
    lines = [
        f"Fashion-MNIST (10 classes), cnn-wide teacher ({args.teacher_epochs} epochs, test {100 * teacher_acc:.2f}%), "
        f"cnn-small students {args.epochs} epochs from the teacher cache (one view per epoch; KD T=4, alpha=0.1 "
        f"as configs/fashion_mnist.yaml), seeds {seeds} paired. Test accuracy (%), final weights.",
        "",
        "| logits kept | bytes per view (measured) | test accuracy | vs all 10 (pt, paired) | bytes per view, 1,000 classes (computed) |",
        "|---|---:|---:|---:|---:|",
    ]
    for k in KS:
        accs = [100 * rows[k][s]["test_accuracy"] for s in seeds]
        diff = [100 * (rows[k][s]["test_accuracy"] - full[s]["test_accuracy"]) for s in seeds]
        per_view = rows[k][seeds[0]]["cache_bytes_per_view"]
        imagenet = 6 + (2 * 1000 if k is None else 4 * k + 4)  # pad-crop params + fp16 logits (+ int16 class, lse)
        ms = f"{statistics.mean(accs):.2f} ± {statistics.stdev(accs):.2f}" if len(accs) > 1 else f"{accs[0]:.2f}"
        dd = (
            "-"
            if k is None
            else (f"{statistics.mean(diff):+.2f}" + (f" ± {statistics.stdev(diff):.2f}" if len(diff) > 1 else ""))
        )
        lines.append(f"| {'all' if k is None else f'top {k}'} | {per_view:.0f} | {ms} | {dd} | {imagenet:,} |")
    write_section(SECTION, "\n".join(lines))
    print("\n".join(lines), flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=seed_list, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--teacher-epochs", type=int, default=5)
    run(p.parse_args())
    return 0


if __name__ == "__main__":
    sys.exit(main())
