"""The whole DAG's wall and where it goes: `python -m pipelines run --local` on a profile, per-step seconds
(step_seconds.* on the MLflow pipeline run) and the pipeline's own overhead.

    .venv/bin/python bench/dag.py --profile default [--runs 2] [--runner subprocess|container] [--modes warm,cold]

Each run gets a fresh pipeline root and sqlite MLflow in a temp folder, with one state folder for all runs
of a mode, so a second run shows what carries over between runs on unchanged data: the trained models
(storage.reuse, by fingerprint) and the teacher cache. With the subprocess runner, ``--modes warm,cold``
interleaves runs whose steps fork from the warm worker with runs whose steps start fresh interpreters,
each mode in its own state folder (both train), so their overhead is compared in the same hour.
With ``--reference-epochs N`` (the default for the full profile) the hand-written loop of BENCH.md
(bench/reference_kd.py: resnet20 teacher epochs, then online-KD cnn-small epochs) is timed in the same run,
half of its epochs before the DAG and half after (this machine drifts by the hour), and the DAG's first run
is set against 15 such teacher epochs + 15 KD epochs (the hand-written runs' length; their per-epoch test
evaluation is left out, which only makes the reference cheaper).
Writes the section "Pipeline cost: DAG wall (<profile>, <runner>[, <modes>])" of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
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
    ap.add_argument(
        "--reference-epochs",
        type=int,
        default=None,
        help="hand-written teacher and KD epochs timed around the DAG (default: 2 for the full profile, else 0)",
    )
    args = ap.parse_args()
    from pipelines.runner import run_local

    n_ref = args.reference_epochs if args.reference_epochs is not None else (2 if args.profile == "full" else 0)
    # the runs' roots, state folders and the reference's unzipped dataset (hundreds of MB): removed at exit
    work = Path(tempfile.mkdtemp(prefix="kdflow-bench-dag-"))
    atexit.register(lambda: (os.chdir(ROOT), shutil.rmtree(work, ignore_errors=True)))
    ref_work = work / "reference"
    reference: dict[str, list[float]] = {"teacher": [], "kd": []}
    hand_written_epochs(ref_work, n_ref - n_ref // 2, reference)  # before the DAG

    modes = args.modes.split(",") if args.runner == "subprocess" else ["container"]
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
    hand_written_epochs(ref_work, n_ref // 2, reference)  # and after it
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
    if n_ref:
        teacher_s, kd_s = (sum(reference[k]) / len(reference[k]) for k in ("teacher", "kd"))
        hand = 15 * (teacher_s + kd_s)
        lines.append(
            f"Hand-written loop of BENCH.md timed in this run ({n_ref} epochs each, half before and half after the DAG): "
            f"teacher epoch {', '.join(f'{t:.1f}' for t in reference['teacher'])} s, online-KD cnn-small epoch "
            f"{', '.join(f'{t:.1f}' for t in reference['kd'])} s; 15 + 15 epochs = {hand:.0f} s. Run 1 wall / that: "
            f"**{runs[0]['wall_seconds'] / hand:.2f}x** (target <= 0.5x). This DAG's student {accs[0].get('student')}% "
            "(the hand-written KD student: 88.92%, BENCH.md)."
        )
    body = "\n".join(lines)
    print(body)
    suffix = f", {'/'.join(modes)}" if args.runner == "subprocess" and modes != ["warm"] else ""
    write_section(f"Pipeline cost: DAG wall ({args.profile}, {args.runner}{suffix})", body)
    return 0


def hand_written_epochs(work: Path, n: int, into: dict[str, list[float]]) -> None:
    """``n`` epochs of BENCH.md's hand-written resnet20 teacher loop and ``n`` of its online-KD cnn-small loop
    (an untrained teacher: its forward costs what a trained one's does), seconds appended to ``into``."""
    if n <= 0:
        return
    import reference_kd
    import torch

    from kdflow.models import zoo as models

    torch.set_num_threads(2)
    dl = reference_kd.loader(work / "tv", batch_size=128)
    for _ in range(n):
        into["teacher"].append(reference_kd.teacher_epoch(models.build_model("resnet20"), dl))
        teacher = models.build_model("resnet20").eval()
        into["kd"].append(reference_kd.kd_epoch(models.build_model("cnn-small"), teacher, dl))
        print(f"hand-written: teacher epoch {into['teacher'][-1]:.1f} s, KD epoch {into['kd'][-1]:.1f} s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
