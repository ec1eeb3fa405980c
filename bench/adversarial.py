"""Adversarial distillation on Fashion-MNIST through kdflow's own steps (tracking off): the rows of issue #16.

Teacher cnn-wide (seed 0, plain training; the resnet20 of BENCH.md costs 2,200 s here). Students cnn-small:
- ``at``: the adversarially trained scratch twin (PGD-AT, labels only), ARD's baseline;
- ``ard``: ARD (the soft term on the student's own PGD examples, the teacher on the clean image) from
  the plain teacher; ``ard-rt``: ARD from a PGD-AT teacher (``teacher.adversarial``), as the paper distils;
  ``ard-rt20`` and ``rslad-rt20``: ARD and RSLAD (robust soft labels, Zi et al. 2021) from a PGD-AT resnet20;
  ``ard-rt20-paper``: ARD from it with the paper's recipe (T 30, the soft term only; the rows above use T 4, alpha 0.1);
- ``kd``: plain KD, for the cost per epoch;
- ``dfad``: data-free (DFAD + the teacher's BN statistics + class balance), no training image read.
Robust accuracy: PGD (eps 0.1, 10 steps, random start) and FGSM on the first ``--robust-samples`` test
images. Finished runs live in bench/_work/adversarial and are reused; the section is rewritten after
every run, so a long run leaves its partial results.

    .venv/bin/python bench/adversarial.py                       # every row, seeds 0,1,2
    .venv/bin/python bench/adversarial.py --rows at,ard --seeds 0
    .venv/bin/python bench/adversarial.py --report
    .venv/bin/python bench/adversarial.py --rows dfad --seeds 0,1,2 --section "Data-free distillation over seeds"
    .venv/bin/python bench/adversarial.py --rows dfad --iterations 2000 --section "Data-free distillation, 2000 steps"

Data-free runs of another ``--iterations`` than 1000 live in ``dfad-it<N>`` beside ``dfad``, with
``--confidence W`` (DAFL's one-hot term) in ``dfad[-it<N>]-conf<W>``, with ``--ema D`` (the student's weight
average reported) in ``...-ema<D>``.
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
from kdflow.data.prepared import load_prepared  # noqa: E402
from kdflow.evaluation.robustness import robustness_report  # noqa: E402
from kdflow.steps.evaluation import load_step_model  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / "_work" / "adversarial"
SECTION = "Adversarial distillation (ARD, data-free DFAD)"
ROWS = {
    "at": ("scratch", ["distill.method=ard"]),  # the scratch twin of an ARD config trains adversarially
    "ard": ("distill", ["distill.method=ard"]),
    # ARD from a PGD-AT teacher (teacher.adversarial), as Goldblum et al. distil: robustness is inherited
    "ard-rt": ("distill", ["distill.method=ard"]),
    # the same from a PGD-AT resnet20: a teacher of more capacity, so clearly more robust than the twin (#28)
    "ard-rt20": ("distill", ["distill.method=ard"]),
    # ARD with the paper's recipe from the same teacher (Goldblum et al.'s code: temperature 30, the soft term only)
    "ard-rt20-paper": ("distill", ["distill.method=ard", "distill.temperature=30", "distill.alpha=0"]),
    # RSLAD from the same teacher: its soft labels drive the attack and the loss (T 1, no hard term; Zi et al. 2021)
    "rslad-rt20": ("distill", ["distill.method=rslad", "distill.temperature=1", "distill.alpha=0"]),
    "kd": ("distill", []),
    "dfad": ("distill", ["distill.method=dfad", "distill.data_free=true"]),
}
# the PGD-AT teachers (teacher.adversarial) of the ARD rows that learn from one: row -> (folder, arch)
ROBUST_TEACHERS = {
    "ard-rt": ("teacher-pgd", "cnn-wide"),
    "ard-rt20": ("teacher-pgd-resnet20", "resnet20"),
    "ard-rt20-paper": ("teacher-pgd-resnet20", "resnet20"),
    "rslad-rt20": ("teacher-pgd-resnet20", "resnet20"),
}


def config(args, extra: list[str]):
    base = [
        "teacher.arch=cnn-wide",
        f"teacher.epochs={args.teacher_epochs}",
        f"student.epochs={args.epochs}",
        f"student.arch={args.student}",
        "tracking.enabled=false",
        f"adversarial.eval_samples={args.robust_samples}",
        f"distill.generator.iterations={args.iterations}",
    ]
    base += [f"distill.generator.confidence_weight={args.confidence}"] if args.confidence else []
    base += [f"distill.generator.student_ema={args.ema}"] if args.ema else []
    return load_config(ROOT / "configs" / "fashion_mnist.yaml", "full", base + extra)


def timed(out: Path, fn) -> None:
    t0 = time.time()
    fn()
    (out / "wall.json").write_text(json.dumps({"seconds": time.time() - t0}))


def robust(out: Path, cfg, prepared) -> dict:
    path = out / "robust.json"
    if not path.is_file():
        model = load_step_model(out, prepared.num_classes, "model")
        path.write_text(json.dumps(robustness_report(model, prepared, cfg.adversarial)))
    return json.loads(path.read_text())


def _folder(args, row: str) -> Path:
    """A row's runs; data-free runs of another generator length than the default 1000 steps keep their own."""
    if row != "dfad":
        return WORK / (row if args.student == "cnn-small" else f"{row}-{args.student}")
    return WORK / (
        row
        + (f"-it{args.iterations}" if args.iterations != 1000 else "")
        + (f"-conf{args.confidence:g}" if args.confidence else "")
        + (f"-ema{args.ema:g}" if args.ema else "")
    )


def run(args, row: str, seed: int, prepared) -> None:
    kind, extra = ROWS[row]
    out = _folder(args, row) / f"seed{seed}"
    cfg = config(args, [*extra, f"train.seed={seed}"])
    if args.robust_only and not (out / "metrics.json").is_file():
        return
    if not (out / "metrics.json").is_file():
        if kind == "scratch":
            timed(out, lambda: steps.train(cfg, "scratch", WORK / "data", out))
        else:
            teacher = WORK / (ROBUST_TEACHERS[row][0] if row in ROBUST_TEACHERS else "teacher") / "model.pt"
            timed(out, lambda: steps.distill(cfg, WORK / "data", teacher, out))
    if row != "kd":
        r = robust(out, cfg, prepared)
        print(f"{row} seed {seed}: PGD {r['pgd_accuracy']:.4f} FGSM {r['fgsm_accuracy']:.4f}", flush=True)


def _runs(args, row: str) -> dict[int, dict]:
    found = {}
    for path in sorted(_folder(args, row).glob("seed*/metrics.json")):
        m = json.loads(path.read_text())
        m["wall"] = json.loads((path.parent / "wall.json").read_text())["seconds"]
        m["epoch_seconds"] = [h["seconds"] for h in json.loads((path.parent / "history.json").read_text())]
        if (path.parent / "robust.json").is_file():
            m.update(json.loads((path.parent / "robust.json").read_text()))
        found[int(path.parent.name[4:])] = m
    return found


def _fmt(values: list[float], pt: bool = False) -> str:
    if not values:
        return "-"
    unit = " pt" if pt else "%"
    sign = "+" if pt else ""
    if len(values) == 1:
        return f"{100 * values[0]:{sign}.2f}{unit}"
    return f"{100 * statistics.mean(values):{sign}.2f} ± {100 * statistics.stdev(values):.2f}{unit}"


def _paired(runs: dict, ard: str, name: str) -> str:
    """ARD - the PGD-AT scratch twin, paired by seed (same student init and data order)."""
    both = [
        s
        for s in sorted(runs[ard].keys() & runs["at"].keys())
        if "pgd_accuracy" in runs[ard][s] and "pgd_accuracy" in runs["at"][s]
    ]
    if not both:
        return ""
    d_pgd = [runs[ard][s]["pgd_accuracy"] - runs["at"][s]["pgd_accuracy"] for s in both]
    d_clean = [runs[ard][s]["test_accuracy"] - runs["at"][s]["test_accuracy"] for s in both]
    return (
        f"\n\nPaired by seed, {name} - the PGD-AT twin: PGD-10 accuracy "
        f"{_fmt(d_pgd, pt=True)} (target >= +2 pt: {'met' if statistics.mean(d_pgd) >= 0.02 else 'MISSED'}), "
        f"clean accuracy {_fmt(d_clean, pt=True)} (target within 2 pt of the twin: "
        f"{'met' if statistics.mean(d_clean) >= -0.02 else 'MISSED'}); seeds {','.join(map(str, both))}."
    )


def _teacher_line(name: str, label: str) -> list[str]:
    d = WORK / name
    if not (d / "metrics.json").is_file():
        return []
    tm = json.loads((d / "metrics.json").read_text())
    rob = json.loads((d / "robust.json").read_text()) if (d / "robust.json").is_file() else {}
    epoch = min(h["seconds"] for h in json.loads((d / "history.json").read_text()))
    return [
        f"| {label} | {100 * tm['test_accuracy']:.2f}% | {_fmt([rob['pgd_accuracy']] if rob else [])} | "
        f"{_fmt([rob['fgsm_accuracy']] if rob else [])} | {epoch:.1f} | "
        f"{json.loads((d / 'wall.json').read_text())['seconds']:.0f} | 0 |"
    ]


def _teacher_lead(runs: dict, student: str) -> str:
    """How much more robust each PGD-AT teacher is than the PGD-AT twin: ARD's premise (#28: clearly more)."""
    twin = [m["pgd_accuracy"] for m in runs["at"].values() if "pgd_accuracy" in m]
    text = ""
    for folder, arch in dict.fromkeys(ROBUST_TEACHERS.values()):
        path = WORK / folder / "robust.json"
        if not twin or not path.is_file():
            continue
        teacher = json.loads(path.read_text())["pgd_accuracy"]
        lead = teacher - statistics.mean(twin)
        text += (
            f"\n\nThe PGD-AT {arch} teacher against the PGD-AT {student} twin: PGD-10 {100 * teacher:.2f}% vs "
            f"{_fmt(twin)}, {100 * lead:+.2f} pt ("
            + ("clearly more robust" if lead >= 0.02 else "barely more robust, little robustness to pass on")
            + ")."
        )
    return text


def report(args) -> str:
    runs = {row: _runs(args, row) for row in ROWS}
    lines = [
        "| row | clean test acc | PGD-10 acc eps 0.1 | FGSM acc eps 0.1 | s/epoch (fastest) | wall per seed (s) | seeds |",
        "|---|---|---|---|---|---|---|",
        *_teacher_line("teacher", f"teacher cnn-wide ({args.teacher_epochs} epochs)"),
        *(
            line
            for folder, arch in dict.fromkeys(ROBUST_TEACHERS.values())
            for line in _teacher_line(
                folder, f"teacher {arch}, PGD-AT ({args.teacher_epochs} epochs, teacher.adversarial)"
            )
        ),
    ]
    names = {
        "at": "cnn-small scratch, PGD-AT (ARD's baseline)",
        "ard": "cnn-small ARD from the plain teacher",
        "ard-rt": "cnn-small ARD from the PGD-AT teacher",
        "ard-rt20": "cnn-small ARD from the PGD-AT resnet20 teacher",
        "ard-rt20-paper": "cnn-small ARD from the PGD-AT resnet20 teacher, the paper's recipe (T 30, soft term only)",
        "rslad-rt20": "cnn-small RSLAD from the PGD-AT resnet20 teacher",
        "kd": "cnn-small plain KD (cost reference)",
        "dfad": "cnn-small data-free DFAD (no training image)"
        + (f", {args.iterations} generator steps" if args.iterations != 1000 else "")
        + (f", confidence weight {args.confidence:g}" if args.confidence else "")
        + (f", the student's weight average (EMA {args.ema:g}) reported" if args.ema else ""),
    }
    names = {row: name.replace("cnn-small", args.student, 1) for row, name in names.items()}
    for row, found in runs.items():
        if not found:
            continue
        ms = list(found.values())
        lines.append(
            f"| {names[row]} | {_fmt([m['test_accuracy'] for m in ms])} | "
            f"{_fmt([m['pgd_accuracy'] for m in ms if 'pgd_accuracy' in m])} | "
            f"{_fmt([m['fgsm_accuracy'] for m in ms if 'fgsm_accuracy' in m])} | "
            f"{min(e for m in ms for e in m['epoch_seconds']):.1f} | "
            f"{statistics.mean(m['wall'] for m in ms):.0f} | {','.join(map(str, found))} |"
        )
    text = "\n".join(lines) + _teacher_lead(runs, args.student)
    for ard in ("ard", "ard-rt", "ard-rt20", "ard-rt20-paper", "rslad-rt20"):
        text += _paired(runs, ard, names[ard])
    if runs["dfad"]:
        ms = list(runs["dfad"].values())
        m0 = ms[0]
        acc = statistics.mean(m["test_accuracy"] for m in ms)
        text += (
            f"\n\nData-free: {m0['generated_images']:,} generated images per run ({args.iterations} generator steps, "
            f"{m0['generator_parameters']:,} generator parameters), the same number of teacher forwards; "
            f"{statistics.mean(m['seconds'] for m in ms):.0f} s of training per seed as measured, "
            f"{len(m0['epoch_seconds']) * min(e for m in ms for e in m['epoch_seconds']):.0f} s at the fastest "
            "epoch's pace (the undisturbed cost where other work shared the cores); 0 training images read. "
            f"Target >= 85% test: {'met' if acc >= 0.85 else 'MISSED'} ({100 * acc:.2f}%)."
        )
    if runs["kd"] and (runs["ard"] or runs["at"]):
        kd = min(e for m in runs["kd"].values() for e in m["epoch_seconds"])
        for row in ("at", "ard", "ard-rt", "ard-rt20", "ard-rt20-paper", "rslad-rt20"):
            if runs[row]:
                r = min(e for m in runs[row].values() for e in m["epoch_seconds"])
                text += f"\n\n{names[row]}: {r:.1f} s/epoch = {r / kd:.1f}x plain KD ({kd:.1f} s/epoch)."
    settings = (
        f"Recipe: configs/fashion_mnist.yaml profile full (SGD nesterov lr 0.1, wd 5e-4, cosine, batch 128, T 4, "
        f"alpha 0.1), students {args.epochs} epochs, teacher cnn-wide {args.teacher_epochs} epochs; adversarial "
        "training PGD-5, eps 0.1, step 2.5*eps/5, random start; robust accuracy on the first "
        f"{args.robust_samples} test images. Data-free: generator width 32, batch 128, 5 student steps per "
        "generator step, BN-statistics and class-balance weights 1. s/epoch is each row's fastest epoch: every "
        "epoch does the same work, so the fastest is the least disturbed when other work shares the 2 cores; "
        "wall is as measured, any disturbance included.\n\n"
    )
    return settings + text


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--student", default="cnn-small", help="the student of every row (its runs in <row>-<student>)")
    p.add_argument("--teacher-epochs", type=int, default=10)
    p.add_argument("--iterations", type=int, default=1000)
    p.add_argument("--confidence", type=float, default=0.0, help="data-free: distill.generator.confidence_weight")
    p.add_argument("--ema", type=float, default=0.0, help="data-free: distill.generator.student_ema")
    p.add_argument("--robust-samples", type=int, default=2000)
    p.add_argument("--report", action="store_true")
    p.add_argument(
        "--robust-only", action="store_true", help="(re)compute robust.json of finished runs only; train nothing"
    )
    p.add_argument(
        "--section", default=SECTION, help="the RESULTS.md section to write (a rerun of some rows beside the record)"
    )
    args = p.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    cfg = config(args, [])
    if not args.report:
        if not (WORK / "data" / "manifest.json").is_file():
            steps.prep(cfg, WORK / "data")
        if not (WORK / "teacher" / "metrics.json").is_file():
            timed(WORK / "teacher", lambda: steps.train(cfg, "teacher", WORK / "data", WORK / "teacher"))
        prepared = load_prepared(WORK / "data")
        robust(WORK / "teacher", cfg, prepared)
        for row, (folder, arch) in ROBUST_TEACHERS.items():
            out = WORK / folder
            if row in args.rows.split(",") and not args.robust_only and not (out / "metrics.json").is_file():
                pgd_cfg = config(args, ["teacher.adversarial=true", f"teacher.arch={arch}"])
                timed(out, lambda: steps.train(pgd_cfg, "teacher", WORK / "data", out))  # noqa: B023 - called at once
            if (out / "metrics.json").is_file():
                robust(out, cfg, prepared)
        seeds = list(map(int, args.seeds.split(",")))
        for seed in seeds:  # seed by seed: every row has a figure early, a long run leaves partial results
            for row in args.rows.split(","):
                if row == "kd" and seed != seeds[0] or row == "kd" and args.robust_only:
                    continue  # plain KD is here for its cost per epoch: one seed
                run(args, row, seed, prepared)
                write_section(args.section, report(args))
    print(report(args))
    write_section(args.section, report(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
