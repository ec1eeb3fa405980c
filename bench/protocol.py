"""Quality rows of bench/PROTOCOL.md through kdflow's own steps (tracking off).

Teacher resnet20 (seed 0); students over seeds 0,1,2: cnn-small scratch, KD online, KD with the cached
teacher (one cache shared by all seeds and cached rows), KD online with the teacher compiled
(distill.compile_teacher), KD + each feature/relation method, DKD (online and cached; beta 8 kept as a row
that collapses), mlp scratch and KD (online and cached), and a diagnosis row (the kd-cached recipe on a
second set of cached views). Finished runs live in bench/_work and are reused;
the section is rewritten after every run from all of them, so a long run leaves its partial results.

    .venv/bin/python bench/protocol.py                 # the full protocol (hours on 2 cores)
    .venv/bin/python bench/protocol.py --quick         # minutes: 3 epochs, a 10k subset, one seed
    .venv/bin/python bench/protocol.py --rows scratch,kd,kd-cached --seeds 0,1,2
    .venv/bin/python bench/protocol.py --report        # rewrite the table from finished runs only
    .venv/bin/python bench/protocol.py --teacher-only  # the split and the teacher only (what bench/tune.py reads)
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
from kdflow.errors import TrainingDiverged  # noqa: E402

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
    # the kd recipe with distill.compile_teacher (torch.compile'd teacher forward): same targets, less time
    "kd-compiled": ("cnn-small", "distill", ["distill.compile_teacher=true"]),
    **{f"kd+{k}": ("cnn-small", "distill", [f"distill.features={v}"]) for k, v in FEATURES.items()},
    # DKD (Zhao et al. 2022): CE + DKD, alpha_tckd 1, T 4, loss ramp over 3 epochs. The paper's CIFAR beta of 8
    # collapses cnn-small to chance at lr 0.1 (kept as a row: the collapse guard stops it); beta 2 trains.
    # the kd-cached recipe on a second, independent set of cached views (view seed 1 instead of 0)
    "kd-cached-views1": ("cnn-small", "distill", ["distill.cache=true", "distill.cache_seed=1"]),
    "dkd": ("cnn-small", "distill", ["distill.method=dkd", "distill.alpha=0.5", "distill.dkd_beta=2.0"]),
    "dkd-cached": (
        "cnn-small",
        "distill",
        ["distill.method=dkd", "distill.alpha=0.5", "distill.dkd_beta=2.0", "distill.cache=true"],
    ),
    "dkd-beta8-cached": (
        "cnn-small",
        "distill",
        ["distill.method=dkd", "distill.alpha=0.5", "distill.dkd_beta=8.0", "distill.cache=true"],
    ),
    "mlp-scratch": ("mlp", "scratch", []),
    "mlp-kd": ("mlp", "distill", []),
    "mlp-kd-cached": ("mlp", "distill", ["distill.cache=true"]),
}
CACHED = {row for row, (_, _, extra) in ROWS.items() if "distill.cache=true" in extra}


def fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.2f}%"
    return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f}%"


def fmt_pt(values: list[float]) -> str:
    """Percentage-point differences, mean ± std when there are several."""
    if len(values) == 1:
        return f"{100 * values[0]:+.2f} pt"
    return f"{100 * statistics.mean(values):+.2f} ± {100 * statistics.stdev(values):.2f} pt"


def measured(work: Path, row: str) -> dict[int, dict]:
    """seed -> metrics (+ wall seconds) of every finished run of a row."""
    found = {}
    for path in sorted((work / row).glob("seed*/metrics.json")):
        m = json.loads(path.read_text())
        m["wall"] = json.loads((path.parent / "wall.json").read_text())["seconds"]
        hist = path.parent / "history.json"
        m["epoch_seconds"] = [h["seconds"] for h in json.loads(hist.read_text())] if hist.is_file() else []
        found[int(path.parent.name[4:])] = m
    return found


def run_one(cfg_args: list[str], arch: str, kind: str, extra: list[str], seed: int, out: Path, work: Path) -> dict:
    """Train one student run into ``out`` (skipped when finished); a collapse is recorded, not raised."""
    if not (out / "metrics.json").is_file():
        rcfg = load_config(
            ROOT / "configs" / "fashion_mnist.yaml",
            "full",
            cfg_args + [f"student.arch={arch}", f"train.seed={seed}", *extra],
        )
        t0 = time.time()
        try:
            if kind == "scratch":
                steps.train(rcfg, "scratch", work / "data", out)
            else:
                steps.distill(rcfg, work / "data", work / "teacher" / "model.pt", out)
        except TrainingDiverged as e:  # a measured outcome of this recipe, not a crash of the benchmark
            (out / "metrics.json").write_text(json.dumps({"failed": str(e)}))
        (out / "wall.json").write_text(json.dumps({"seconds": time.time() - t0}))
    return json.loads((out / "metrics.json").read_text())


def run_row(cfg_args: list[str], row: str, seeds: list[int], work: Path) -> None:
    arch, kind, extra = ROWS[row]
    for seed in seeds:
        m = run_one(cfg_args, arch, kind, extra, seed, work / row / f"seed{seed}", work)
        print(f"{row} seed {seed}: {m.get('test_accuracy', m.get('failed'))}", flush=True)


def paired(a: dict[int, dict], b: dict[int, dict]) -> list[float]:
    """a - b in final test accuracy over the seeds both rows have (same seed = same data order and init)."""
    return [
        a[s]["test_accuracy"] - b[s]["test_accuracy"]
        for s in sorted(a.keys() & b.keys())
        if "failed" not in a[s] and "failed" not in b[s]
    ]


def report(work: Path, quick: bool) -> str:
    """The table of every row finished under `work`, whichever invocation measured it."""
    tm = json.loads((work / "teacher" / "metrics.json").read_text())
    t_wall = json.loads((work / "teacher" / "wall.json").read_text())["seconds"]
    t_hist = json.loads((work / "teacher" / "history.json").read_text())
    lines = [
        "| row | final test acc | val-selected test acc | s/epoch (median) | wall (s, mean per seed) | seeds |",
        "|---|---|---|---|---|---|",
        f"| teacher resnet20 | {100 * tm['test_accuracy']:.2f}% | {100 * tm['val_selected_test_accuracy']:.2f}% | "
        f"{statistics.median(h['seconds'] for h in t_hist):.1f} | {t_wall:.0f} | 0 |",
    ]
    runs = {row: measured(work, row) for row in ROWS}
    for row, (arch, _, _) in ROWS.items():
        found = runs[row]
        if not found:
            continue
        ms = list(found.values())
        note = " (teacher cache shared by seeds and rows)" if row in CACHED else ""
        if any("failed" in m for m in ms):
            reason = next(m["failed"] for m in ms if "failed" in m).split("; fix:")[0]
            lines.append(
                f"| {arch} {row}{note} | failed in {sum('failed' in m for m in ms)}/{len(ms)} seeds: "
                f"{reason} | - | - | {statistics.mean(m['wall'] for m in ms):.0f} | {','.join(map(str, found))} |"
            )
            continue
        lines.append(
            f"| {arch} {row}{note} | {fmt([m['test_accuracy'] for m in ms])} | "
            f"{fmt([m['val_selected_test_accuracy'] for m in ms])} | "
            f"{statistics.median(e for m in ms for e in m['epoch_seconds']):.1f} | "
            f"{statistics.mean(m['wall'] for m in ms):.0f} | {','.join(map(str, found))} |"
        )
    gains = [
        ("cnn-small KD (online) - scratch", "kd", "scratch"),
        ("cnn-small KD (cached) - scratch", "kd-cached", "scratch"),
        ("cnn-small DKD (cached) - scratch", "dkd-cached", "scratch"),
        ("cnn-small DKD (online) - scratch", "dkd", "scratch"),
        ("mlp KD (online) - scratch", "mlp-kd", "mlp-scratch"),
        ("mlp KD (cached) - scratch", "mlp-kd-cached", "mlp-scratch"),
        ("cnn-small KD cached - KD online (accuracy)", "kd-cached", "kd"),
        ("cnn-small KD cached (view seed 1) - KD online (accuracy)", "kd-cached-views1", "kd"),
        ("cnn-small KD cached: view seed 1 - view seed 0", "kd-cached-views1", "kd-cached"),
        ("cnn-small KD online: compiled teacher - eager teacher (accuracy)", "kd-compiled", "kd"),
    ]
    gain_lines = [f"| {name} | {fmt_pt(d)} | {len(d)} |" for name, a, b in gains if (d := paired(runs[a], runs[b]))]
    text = "\n".join(lines)
    if gain_lines:
        text += (
            "\n\nPaired by seed (same seed: same student init and data order; every row shares one train/val split), final test "
            "accuracy:\n\n| difference | mean ± std | seeds |\n|---|---|---|\n" + "\n".join(gain_lines)
        )
    cached = [m for row in CACHED for m in runs[row].values() if "cache_views" in m and not m["cache_reused"]]
    if cached and runs["scratch"]:
        c = cached[0]
        ratio = (
            statistics.median(e for m in runs["kd-cached"].values() for e in m["epoch_seconds"])
            / statistics.median(e for m in runs["scratch"].values() for e in m["epoch_seconds"])
            if runs["kd-cached"]
            else None
        )
        text += (
            f"\n\nTeacher cache: {c['cache_views']} views (one per student epoch) built once in "
            f"{c['cache_build_seconds']:.0f} s ({c['cache_build_seconds'] / c['cache_views']:.1f} s per view), "
            "counted in the wall of the first run that built it and reused by the other cached rows"
            + (f"; cached KD epoch / scratch epoch = {ratio:.2f}x (separate runs)." if ratio else ".")
        )
    return text


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--work", default="bench/_work")
    p.add_argument("--report", action="store_true", help="train nothing; rewrite the section from finished runs")
    p.add_argument("--teacher-only", action="store_true", help="prepare the split and train the teacher; no rows")
    a = p.parse_args()
    seeds = [0] if a.quick else [int(s) for s in a.seeds.split(",")]
    rows = [] if a.report else a.rows.split(",")
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise SystemExit(f"error: --rows: unknown row(s) {', '.join(unknown)}; fix: choose from {', '.join(ROWS)}")
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
    if a.teacher_only:
        print(f"teacher ready: {teacher_dir / 'model.pt'}")
        return 0
    header = (
        "Recipe of bench/PROTOCOL.md (`configs/fashion_mnist.yaml`, profile `full`): SGD nesterov lr 0.1, "
        "wd 5e-4, 1 warm-up epoch then cosine, batch 128, T=4, alpha=0.1 (hard weight), 15 epochs"
        + (" -- QUICK: 3 epochs (0.5 warm-up) on 10k samples, one seed" if a.quick else "")
        + ". Mean ± std over the seeds listed; s/epoch is the median over every epoch of every seed (robust to "
        "other work on this shared 2-core machine, which the wall column is not). Each row was measured by `bench/protocol.py --rows <row> "
        "--seeds <seeds>`; the table gathers every finished run under " + f"`{work}`.\n\n"
    )
    for row, seed in [(r, s) for r in rows for s in seeds]:  # the section is rewritten after every run
        run_row(base, row, [seed], work)
        write_section("Quality (protocol)" + (" (quick)" if a.quick else ""), header + report(work, a.quick))
    text = report(work, a.quick)
    write_section("Quality (protocol)" + (" (quick)" if a.quick else ""), header + text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
