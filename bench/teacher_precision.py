"""Teacher training at reduced precision: accuracy and epoch time, fp32 vs bf16 autocast + channels_last.

A default may change only when accuracy holds within seed noise (issue 17), so every variant is trained
over the same seeds on the same prepared data (one split), through kdflow's own teacher step (tracking
off). Rows: resnet20 at the full profile (15 epochs, BENCH.md's recipe) and cnn-wide at the default profile
(the main job's teacher, 4 epochs). Finished runs live in bench/_work/teacher_precision and are reused;
the section is rewritten after every run, so a long run leaves its partial results.

    .venv/bin/python bench/teacher_precision.py                                  # every row, seeds 0,1,2
    .venv/bin/python bench/teacher_precision.py --rows cnn-wide/fp32,cnn-wide/bf16-cl --seeds 0,1,2
    .venv/bin/python bench/teacher_precision.py --report                         # rewrite from finished runs
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
PROFILES = {"resnet20": "full", "cnn-wide": "default"}
# Variants set through the teacher's own section, as a user would (teacher.amp, teacher.channels_last).
VARIANTS = {
    "fp32": ["teacher.amp=off", "teacher.channels_last=false"],
    "fp32-cl": ["teacher.amp=off", "teacher.channels_last=true"],
    "bf16-cl": ["teacher.amp=bf16", "teacher.channels_last=true"],
}
ROWS = [f"{arch}/{v}" for arch in PROFILES for v in VARIANTS]


def run_dir(work: Path, row: str, seed: int) -> Path:
    return work / row.replace("/", "_") / f"seed{seed}"


def train_one(work: Path, row: str, seed: int) -> dict:
    arch, variant = row.split("/")
    out = run_dir(work, row, seed)
    if not (out / "metrics.json").is_file():
        base = ["tracking.enabled=false", f"storage.state_dir={work / 'state'}", "train.num_threads=2"]
        cfg = load_config(
            ROOT / "configs" / "fashion_mnist.yaml",
            PROFILES[arch],
            base + [f"teacher.arch={arch}", f"train.seed={seed}", *VARIANTS[variant]],
        )
        data_dir = work / f"data-{PROFILES[arch]}"
        if not (data_dir / "manifest.json").is_file():
            steps.prep(cfg, data_dir)
        t0 = time.time()
        steps.train(cfg, "teacher", data_dir, out)
        (out / "wall.json").write_text(json.dumps({"seconds": time.time() - t0}))
    return json.loads((out / "metrics.json").read_text())


def finished(work: Path, row: str) -> dict[int, dict]:
    found = {}
    for path in sorted(run_dir(work, row, 0).parent.glob("seed*/metrics.json")):
        m = json.loads(path.read_text())
        m["epoch_seconds"] = [h["seconds"] for h in json.loads((path.parent / "history.json").read_text())]
        found[int(path.parent.name[4:])] = m
    return found


def fmt(values: list[float], unit: str = "%") -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.2f}{unit}"
    return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f}{unit}"


def report(work: Path) -> str:
    runs = {row: finished(work, row) for row in ROWS}
    lines = [
        "| teacher | variant | epochs | final test acc | val-selected test acc | s/epoch (median) | vs fp32 | seeds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row, found in runs.items():
        if not found:
            continue
        arch, variant = row.split("/")
        median = statistics.median(e for m in found.values() for e in m["epoch_seconds"])
        fp32 = runs[f"{arch}/fp32"]
        ratio = (
            f"{median / statistics.median(e for m in fp32.values() for e in m['epoch_seconds']):.2f}x" if fp32 else "-"
        )
        lines.append(
            f"| {arch} | {variant} | {next(iter(found.values()))['epochs']} "
            f"| {fmt([m['test_accuracy'] for m in found.values()])} "
            f"| {fmt([m['val_selected_test_accuracy'] for m in found.values()])} | {median:.1f} | {ratio} "
            f"| {','.join(map(str, found))} |"
        )
    diffs = []
    for arch in PROFILES:
        for variant in VARIANTS:
            if variant == "fp32":
                continue
            a, b = runs[f"{arch}/{variant}"], runs[f"{arch}/fp32"]
            seeds = sorted(set(a) & set(b))
            if seeds:
                d = [a[s]["test_accuracy"] - b[s]["test_accuracy"] for s in seeds]
                diffs.append(f"| {arch}: {variant} - fp32 | {fmt(d, ' pt')} | {','.join(map(str, seeds))} |")
    text = "\n".join(lines)
    if diffs:
        text += "\n\nPaired by seed (same init, data order and split), final test accuracy:\n\n"
        text += "| difference | mean ± std | seeds |\n|---|---|---|\n" + "\n".join(diffs)
    return text


HEADER = (
    "kdflow's teacher step (`steps.train(cfg, 'teacher', ...)`, tracking off, 2 threads), the recipe of "
    "`configs/fashion_mnist.yaml`: resnet20 at profile `full` (15 epochs, BENCH.md), cnn-wide at profile `default` "
    "(4 epochs). Variants: fp32 contiguous (the old default), fp32 channels_last (same arithmetic, another memory "
    "layout), bf16 autocast + channels_last (`teacher.amp: bf16`, `teacher.channels_last: true`). s/epoch is the "
    "median over every epoch of every seed (this 2-core machine is shared; the median resists other work). "
    "resnet20 in fp32 was not re-run here (~30 min a seed); its reference is the `teacher resnet20` row of "
    '"Quality (protocol)" (fp32 contiguous, seed 0, same split and recipe) and BENCH.md\'s hand-written 94.21% '
    "(60,000 training images, no validation hold-out).\n\n"
)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--work", default="bench/_work/teacher_precision")
    p.add_argument("--report", action="store_true", help="train nothing; rewrite the section from finished runs")
    a = p.parse_args()
    rows = [] if a.report else a.rows.split(",")
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise SystemExit(f"error: --rows: unknown row(s) {', '.join(unknown)}; fix: choose from {', '.join(ROWS)}")
    work = Path(a.work)
    for seed in [int(s) for s in a.seeds.split(",")]:  # seed-major: a partial run still pairs its seeds
        for row in rows:
            m = train_one(work, row, seed)
            print(f"{row} seed {seed}: test {m['test_accuracy']:.4f}", flush=True)
            write_section("Pipeline cost: teacher precision", HEADER + report(work))
    text = report(work)
    write_section("Pipeline cost: teacher precision", HEADER + text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
