"""Quality rows of ../shared/BENCH.md through kdflow's own steps (tracking off).

Teacher resnet20 (seed 0); students over seeds 0,1,2: cnn-small scratch, KD online, KD with the cached
teacher (one cache shared by all seeds), KD + each feature/relation method, DKD; mlp scratch and KD.
Each finished row is written to bench/RESULTS.md at once, so a long run leaves its partial results.

    .venv/bin/python bench/protocol.py                 # the full protocol (hours on 2 cores)
    .venv/bin/python bench/protocol.py --quick         # minutes: 3 epochs, a 10k subset, one seed
    .venv/bin/python bench/protocol.py --rows scratch,kd,kd-cached --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import write_section  # noqa: E402

from kdflow import steps  # noqa: E402
from kdflow.config import load_config  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FEATURES = {  # student module <- teacher module (resnet20 -> cnn-small), weights from the papers' defaults
    "fitnets": "[{kind: fitnets, student_module: block2, teacher_module: layer3, weight: 1.0}]",
    "at": "[{kind: at, student_module: block1, teacher_module: layer2, weight: 1000.0}]",
    "rkd": "[{kind: rkd, student_module: block2, teacher_module: pool, weight: 1.0}]",  # pooled embeddings
    "sp": "[{kind: sp, student_module: block2, teacher_module: layer3, weight: 3000.0}]",
}
ROWS = {
    "scratch": ("cnn-small", "scratch", []),
    "kd": ("cnn-small", "distill", []),
    "kd-cached": ("cnn-small", "distill", ["distill.cache=true"]),
    **{f"kd+{k}": ("cnn-small", "distill", [f"distill.features={v}"]) for k, v in FEATURES.items()},
    "dkd": ("cnn-small", "distill", ["distill.method=dkd", "distill.alpha=0.5"]),
    "mlp-scratch": ("mlp", "scratch", []),
    "mlp-kd": ("mlp", "distill", []),
}


def fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.2f}%"
    return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f}%"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--work", default="bench/_work")
    a = p.parse_args()
    seeds = [0] if a.quick else [int(s) for s in a.seeds.split(",")]
    rows = a.rows.split(",")
    work = Path(a.work) / ("quick" if a.quick else "full")
    base = ["tracking.enabled=false", f"storage.state_dir={work / 'state'}", "train.num_threads=2"]
    if a.quick:
        base += ["data.train_subset=10000", "train.epochs=3", "train.warmup_epochs=0.5"]
    cfg = load_config(ROOT / "configs" / "fashion_mnist.yaml", "full", base)
    data_dir = work / "data"
    if not (data_dir / "manifest.json").is_file():
        steps.prep(cfg, data_dir)
    teacher_dir = work / "teacher"
    if not (teacher_dir / "metrics.json").is_file():
        t0 = time.time()
        steps.train(cfg, "teacher", data_dir, teacher_dir)
        (teacher_dir / "wall.json").write_text(json.dumps({"seconds": time.time() - t0}))
    tm = json.loads((teacher_dir / "metrics.json").read_text())
    t_wall = json.loads((teacher_dir / "wall.json").read_text())["seconds"]
    lines = ["| row | final test acc | val-selected test acc | s/epoch | wall (s, per seed) | seeds |", "|---|---|---|---|---|---|",
             f"| teacher resnet20 | {100 * tm['test_accuracy']:.2f}% | {100 * tm['val_selected_test_accuracy']:.2f}% | "
             f"{tm['seconds_per_epoch']:.1f} | {t_wall:.0f} | 0 |"]
    for row in rows:
        arch, kind, extra = ROWS[row]
        finals, selected, spe, walls = [], [], [], []
        for seed in seeds:
            out = work / row / f"seed{seed}"
            if not (out / "metrics.json").is_file():
                rcfg = load_config(ROOT / "configs" / "fashion_mnist.yaml", "full",
                                   base + [f"student.arch={arch}", f"train.seed={seed}", *extra])
                t0 = time.time()
                if kind == "scratch":
                    steps.train(rcfg, "scratch", data_dir, out)
                else:
                    steps.distill(rcfg, data_dir, teacher_dir / "model.pt", out)
                (out / "wall.json").write_text(json.dumps({"seconds": time.time() - t0}))
            m = json.loads((out / "metrics.json").read_text())
            finals.append(m["test_accuracy"])
            selected.append(m["val_selected_test_accuracy"])
            spe.append(m["seconds_per_epoch"])
            walls.append(json.loads((out / "wall.json").read_text())["seconds"])
            print(f"{row} seed {seed}: {m['test_accuracy']:.4f}", flush=True)
        note = " (cache built once, shared by seeds)" if row == "kd-cached" else ""
        lines.append(f"| {arch} {row}{note} | {fmt(finals)} | {fmt(selected)} | {statistics.mean(spe):.1f} | "
                     f"{statistics.mean(walls):.0f} | {','.join(map(str, seeds))} |")
        body = ("Recipe of ../shared/BENCH.md (`configs/fashion_mnist.yaml`, profile `full`): SGD nesterov lr 0.1, "
                "wd 5e-4, 1 warm-up epoch then cosine, batch 128, T=4, alpha=0.1 (hard weight), 15 epochs"
                + (" -- QUICK: 3 epochs (0.5 warm-up) on 10k samples, one seed" if a.quick else "") + ". Mean ± std over seeds.\n\n"
                + "\n".join(lines) + f"\n\nRows not listed were not run in this invocation (asked for: {', '.join(rows)}).")
        write_section("Quality (protocol)" + (" (quick)" if a.quick else ""), body)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
