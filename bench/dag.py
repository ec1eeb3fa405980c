"""The whole DAG's wall and where it goes: `python -m pipelines run --local` on a profile, per-step seconds
(step_seconds.* on the MLflow pipeline run) and the pipeline's own overhead.

    .venv/bin/python bench/dag.py --profile default [--runs 2] [--runner subprocess|container] [--modes warm,cold]

Each run gets a fresh pipeline root and sqlite MLflow in a temp folder, with one state folder for all runs
of a mode, so a second run shows what carries over between runs on unchanged data: the trained models
(storage.reuse, by fingerprint) and the teacher cache. With the subprocess runner, ``--modes warm,cold``
interleaves runs whose steps fork from the warm worker with runs whose steps start fresh interpreters,
each mode in its own state folder (both train), so their overhead is compared in the same hour.
Writes the section "Pipeline cost: DAG wall (<profile>, <runner>[, <modes>])" of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--profile", default="default")
    ap.add_argument("--runs", type=int, default=1, help="successive runs on unchanged data")
    ap.add_argument("--runner", choices=["subprocess", "container"], default="subprocess")
    ap.add_argument("--modes", default="warm", help="subprocess runner: warm, cold or warm,cold (interleaved)")
    args = ap.parse_args()
    from pipelines.runner import run_local

    modes = args.modes.split(",") if args.runner == "subprocess" else ["container"]
    work = Path(tempfile.mkdtemp(prefix="kdflow-bench-dag-"))
    runs, labels = [], []
    for i in range(args.runs):
        for mode in modes:
            home = work / mode
            home.mkdir(exist_ok=True)
            os.chdir(home)  # the state folder (.kdflow: teacher cache, trained models) is shared by a mode's runs
            os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{home}/mlflow.db"
            summary = run_local(
                profile=args.profile, root=str(home / f"root{i}"), runner=args.runner, warm=mode != "cold"
            )
            runs.append(summary)
            labels.append(f"{mode} run {i + 1}" if len(modes) > 1 else f"run {i + 1}")
    steps = [s for s, _, _ in runs[0]["step_seconds"]]
    head = "| step | " + " | ".join(f"{label} s | share" for label in labels) + " |"
    lines = [head, "|---|" + "---|---|" * len(runs)]
    for step in steps:
        cells = []
        for r in runs:
            row = {s: (v, share) for s, v, share in r["step_seconds"]}.get(step, (0.0, 0.0))
            cells.append(f"{row[0]:.1f} | {100 * row[1]:.0f}%")
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    lines.append("| **wall** | " + " | ".join(f"**{r['wall_seconds']:.0f}** | 100%" for r in runs) + " |")
    accs = [
        {k: round(100 * m["accuracy"], 2) for k, m in r["evaluation"]["models"].items() if "accuracy" in m}
        for r in runs
    ]
    lines += ["", f"Test accuracy (%), run by run: {accs}"]
    for i, r in enumerate(runs):
        steps_reused = sorted(r.get("reused") or {})
        overhead = {s: v for s, v, _ in r["step_seconds"]}.get("pipeline_overhead")
        share = (
            f", pipeline overhead {overhead:.1f} s = {100 * overhead / r['wall_seconds']:.1f}% of the wall"
            if overhead
            else ""
        )
        lines.append(f"{labels[i]}: reused {', '.join(steps_reused) or 'nothing'} (storage.reuse){share}.")
    if args.profile == "full":  # BENCH.md's hand-written loop: teacher 1,575 s + online KD student 751 s
        hand = 1575 + 751
        lines.append(
            f"Run 1 wall / hand-written teacher + KD runs (BENCH.md, 1,575 s + 751 s = {hand} s): "
            f"{runs[0]['wall_seconds'] / hand:.2f}x (target <= 0.5x); hand-written KD student 88.92%, "
            f"this DAG's student {accs[0].get('student')}%."
        )
    body = "\n".join(lines)
    print(body)
    suffix = f", {'/'.join(modes)}" if args.runner == "subprocess" and modes != ["warm"] else ""
    write_section(f"Pipeline cost: DAG wall ({args.profile}, {args.runner}{suffix})", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
