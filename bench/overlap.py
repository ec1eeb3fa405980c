"""Do independent steps pay to overlap on this machine? The teacher and the scratch twin (no edge between
them in the DAG), one after the other vs at the same time, each step its own process as in the pipeline.

    .venv/bin/python bench/overlap.py [--profile default] [--rounds 1]

Arms: sequential (2 threads each, today's local run), concurrent with 1 thread each (the cores split),
concurrent with 2 threads each (oversubscribed). Reuse is off, tracking off; one prepared data folder.
Writes the section "Pipeline cost: overlapping independent steps" of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
STEP = """
import sys
from kdflow import steps
from kdflow.config import load_config
cfg = load_config(sys.argv[1], sys.argv[2], sys.argv[6:])
steps.train(cfg, sys.argv[3], sys.argv[4], sys.argv[5])
"""


def launch(work: Path, profile: str, role: str, threads: int, tag: str) -> subprocess.Popen:
    sets = [
        "tracking.enabled=false",
        "storage.reuse=false",
        f"storage.state_dir={work / 'state'}",
        f"train.num_threads={threads}",
    ]
    config = str(ROOT / "configs" / "fashion_mnist.yaml")
    args = [sys.executable, "-c", STEP, config, profile, role, str(work / "data"), str(work / tag)]
    return subprocess.Popen(args + sets, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wall(procs_in_order: list[list], work: Path, profile: str, tag: str) -> float:
    """Groups run one after another; the steps of a group run at the same time."""
    t0 = time.time()
    for group in procs_in_order:
        running = [launch(work, profile, role, threads, f"{tag}-{role}") for role, threads in group]
        for p in running:
            if p.wait() != 0:
                raise SystemExit(f"a step of arm {tag} failed")
    return time.time() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--profile", default="default")
    ap.add_argument("--rounds", type=int, default=1)
    a = ap.parse_args()
    from kdflow import steps
    from kdflow.config import load_config

    work = Path(tempfile.mkdtemp(prefix="kdflow-bench-overlap-"))
    cfg = load_config(ROOT / "configs" / "fashion_mnist.yaml", a.profile, ["tracking.enabled=false"])
    steps.prep(cfg, work / "data")
    arms = {
        "sequential, 2 threads each": [[("teacher", 2)], [("scratch", 2)]],
        "concurrent, 1 thread each": [[("teacher", 1), ("scratch", 1)]],
        "concurrent, 2 threads each": [[("teacher", 2), ("scratch", 2)]],
    }
    walls: dict[str, list[float]] = {k: [] for k in arms}
    for r in range(a.rounds):  # interleaved rounds: drift hits every arm alike
        for i, (name, groups) in enumerate(arms.items()):
            walls[name].append(wall(groups, work, a.profile, f"r{r}a{i}"))
            print(f"{name}: {walls[name][-1]:.1f} s", flush=True)
    base = min(walls["sequential, 2 threads each"])
    lines = [
        f"Profile `{a.profile}`: teacher ({cfg.teacher.arch}, {cfg.epochs_for('teacher')} epochs) and scratch twin "
        f"({cfg.student.arch}, {cfg.epochs_for('student')} epochs), each a fresh Python process as in the pipeline, "
        f"{a.rounds} round(s), best wall per arm.",
        "",
        "| arm | wall s | vs sequential |",
        "|---|---|---|",
    ]
    lines += [f"| {k} | {min(v):.1f} | {min(v) / base:.2f}x |" for k, v in walls.items()]
    body = "\n".join(lines)
    print(body)
    write_section("Pipeline cost: overlapping independent steps", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
