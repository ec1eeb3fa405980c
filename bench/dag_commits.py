"""One DAG profile at two commits, interleaved in the same hour: what a change did to the pipeline's wall.

    .venv/bin/python bench/dag_commits.py --base 8c4fc8d [--head HEAD] [--profile smoke] [--rounds 3]

Each commit is checked out into a temporary git worktree; each round runs the DAG once per commit (base,
then head) in a fresh folder of its own (state, sqlite MLflow, pipeline root: what a test or a new checkout
sees), as a fresh Python process with that worktree first on its path. Reports the median wall of the whole
``run_local`` call (config checks, the warm worker's start, the DAG, its summary) and each step's median
seconds per commit. Writes the section "Pipeline cost: <profile> DAG, <base> vs <head>".
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DRIVER = """
import json, sys, time
from pipelines.runner import run_local
started = time.perf_counter()  # the whole call: config checks, the warm worker's start, the DAG, the summary
s = run_local(profile=sys.argv[1], root="root")
wall = time.perf_counter() - started
print("SUMMARY " + json.dumps({"wall": wall, "dag_wall": s["wall_seconds"], "steps": s["step_seconds"],
      "accuracy": {k: m["accuracy"] for k, m in s["evaluation"]["models"].items()}}))
"""


def _rev(rev: str) -> str:
    return subprocess.run(
        ["git", "rev-parse", "--short", rev], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()


def _run(tree: Path, profile: str, home: Path) -> dict:
    home.mkdir(parents=True)
    env = {
        **os.environ,
        "PYTHONPATH": f"{tree}{os.pathsep}{tree / 'src'}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{home}/mlflow.db",
    }
    proc = subprocess.run([sys.executable, "-c", DRIVER, profile], cwd=home, env=env, capture_output=True, text=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("SUMMARY ")), None)
    if proc.returncode or line is None:
        raise SystemExit(f"dag_commits: the {profile} DAG failed in {tree}:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return json.loads(line[len("SUMMARY ") :])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True)
    ap.add_argument("--head", default="HEAD")
    ap.add_argument("--profile", default="smoke")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    revs = {"base": _rev(a.base), "head": _rev(a.head)}
    work = Path(tempfile.mkdtemp(prefix="kdflow-bench-commits-"))
    trees = {}
    try:
        for name, rev in revs.items():
            trees[name] = work / name
            subprocess.run(
                ["git", "worktree", "add", "--detach", str(trees[name]), rev], cwd=ROOT, check=True, capture_output=True
            )
        runs: dict[str, list[dict]] = {"base": [], "head": []}
        for i in range(a.rounds):
            for name in ("base", "head"):
                runs[name].append(_run(trees[name], a.profile, work / f"{name}-{i}"))
                print(
                    f"[dag_commits] round {i + 1}/{a.rounds} {name} {revs[name]}: {runs[name][-1]['wall']:.1f} s",
                    flush=True,
                )
    finally:
        for tree in trees.values():
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
    med = {n: {"wall": statistics.median(r["wall"] for r in rs)} for n, rs in runs.items()}
    steps = [s for s, _, _ in runs["head"][0]["steps"]]
    for n, rs in runs.items():
        for s in steps:
            med[n][s] = statistics.median({k: v for k, v, _ in r["steps"]}.get(s, 0.0) for r in rs)
    lines = [
        f"Profile `{a.profile}`, {a.rounds} rounds, each round the base commit then the head commit, every run in a "
        "fresh folder (new state dir and sqlite MLflow store) and a fresh process; medians.",
        "",
        f"| step | {revs['base']} (base) s | {revs['head']} (head) s | head / base |",
        "|---|---|---|---|",
    ]
    for s in steps:
        b, h = med["base"][s], med["head"][s]
        lines.append(f"| {s} | {b:.1f} | {h:.1f} | {h / b:.2f}x |" if b else f"| {s} | {b:.1f} | {h:.1f} | - |")
    b, h = med["base"]["wall"], med["head"]["wall"]
    lines.append(f"| **wall** (the whole `run_local` call) | **{b:.1f}** | **{h:.1f}** | **{h / b:.2f}x** |")
    walls = {n: [round(r["wall"], 1) for r in rs] for n, rs in runs.items()}
    same = all(r["accuracy"] == runs["base"][0]["accuracy"] for rs in runs.values() for r in rs)
    lines += ["", f"Walls run by run: {walls}. Same test accuracies in every run: {same}."]
    body = "\n".join(lines)
    print(body)
    write_section(f"Pipeline cost: {a.profile} DAG, {revs['base']} vs {revs['head']}", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
