"""The whole DAG's wall and where it goes: `python -m pipelines run --local` on a profile, per-step seconds
(step_seconds.* on the MLflow pipeline run) and the pipeline's own overhead.

    .venv/bin/python bench/dag.py --profile default [--runs 2] [--runner subprocess|container]

Each run gets a fresh pipeline root and sqlite MLflow in a temp folder, with one state folder for all runs,
so a second run shows what carries over between runs on unchanged data (the teacher-output cache).
Writes the section "Pipeline cost: DAG wall (<profile>, <runner>)" of bench/RESULTS.md.
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
    args = ap.parse_args()
    from pipelines.runner import run_local

    work = Path(tempfile.mkdtemp(prefix="kdflow-bench-dag-"))
    os.chdir(work)  # the state folder (.kdflow: teacher cache) is shared by the runs
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work}/mlflow.db"
    runs = []
    for i in range(args.runs):
        summary = run_local(profile=args.profile, root=str(work / f"root{i}"), runner=args.runner)
        runs.append(summary)
    steps = [s for s, _, _ in runs[0]["step_seconds"]]
    head = "| step | " + " | ".join(f"run {i + 1} s | share" for i in range(len(runs))) + " |"
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
    body = "\n".join(lines)
    print(body)
    write_section(f"Pipeline cost: DAG wall ({args.profile}, {args.runner})", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
