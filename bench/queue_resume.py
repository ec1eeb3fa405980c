"""A session's start in one command: the carried queue state back, its worktree, and the queue running again.

The queue's checkpoints resume only under the code that made them (the training-code digest), so the queue runs
from a worktree at the commit bench/carry/MANIFEST.json names, while this checkout moves on. Steps, each skipped
when already done: ``carry.py restore``; ``git worktree add --detach TREE COMMIT``; ``TREE/bench/_work`` linked to
this checkout's; this checkout's bench scripts and queue.txt put into TREE (bench/ is outside the training-code
digest; HEAD is never moved); ``queue_runner.py start`` in TREE, with the sections written to this checkout's
bench/RESULTS.md.

    .venv/bin/python bench/queue_resume.py --tree ../bench-tree
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import carry  # noqa: E402
from queue_runner import runner_pid  # noqa: E402

ROOT = carry.BENCH.parent


def _git(*args: str, cwd: Path = ROOT) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"queue_resume: error: git {' '.join(args)}: {done.stderr.strip().splitlines()[-1:]}")
    return done.stdout.strip()


def worktree(tree: Path, commit: str) -> None:
    """TREE at COMMIT: made when missing; an existing one at another commit is refused (its checkpoints)."""
    if not tree.exists():
        _git("worktree", "add", "-f", "--detach", str(tree), commit)
        return
    head = _git("rev-parse", "HEAD", cwd=tree)
    if head != commit:
        raise SystemExit(
            f"queue_resume: error: --tree: {tree} is at {head[:9]}, the carried checkpoints at {commit[:9]}; fix: "
            "pass another --tree (a new worktree is made there) or check out that commit in it"
        )


def link_work(tree: Path) -> None:
    link = tree / "bench" / "_work"
    if link.is_symlink() and link.resolve() == carry.WORK.resolve():
        return
    if link.exists() or link.is_symlink():
        raise SystemExit(f"queue_resume: error: {link} exists and is not a link to {carry.WORK}; fix: move it away")
    link.symlink_to(carry.WORK)


def bench_scripts(tree: Path) -> list[str]:
    """This checkout's committed bench scripts and queue into TREE (a working copy; TREE's HEAD stays)."""
    files = _git("ls-files", "bench/*.py", "bench/queue.txt").split()
    _git("checkout", _git("rev-parse", "HEAD"), "--", *files, cwd=tree)
    return files


def start(tree: Path) -> None:
    env = dict(os.environ)
    env.update(
        KDFLOW_RESULTS=str(ROOT / "bench" / "RESULTS.md"), PYTHON=sys.executable, PYTHONPATH=f"{tree / 'src'}:{tree}"
    )
    subprocess.run([sys.executable, "bench/queue_runner.py", "start"], cwd=tree, env=env, check=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tree", default=str(ROOT.parent / "bench-tree"), help="the queue's worktree (made if missing)")
    a = p.parse_args()
    if runner_pid() is not None:
        print(f"queue_resume: the queue is already running (pid {runner_pid()}); nothing to do")
        return 0
    if carry.restore(carry.WORK, carry.CARRY) != 0:
        return 1
    if not (carry.CARRY / "MANIFEST.json").is_file():
        raise SystemExit(
            "queue_resume: error: nothing carried (no bench/carry/MANIFEST.json); fix: start the queue in this "
            "checkout with bench/queue_runner.py start"
        )
    commit = carry.carried_commit(carry.CARRY)
    tree = Path(a.tree).resolve()
    worktree(tree, commit)
    link_work(tree)
    files = bench_scripts(tree)
    print(f"queue_resume: {tree} at {commit[:9]}, {len(files)} bench files from this checkout's HEAD")
    start(tree)
    return 0


if __name__ == "__main__":
    sys.exit(main())
