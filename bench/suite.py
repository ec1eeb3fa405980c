"""`make test`'s wall, tier by tier: unit, integration, e2e, as scripts/test_tiers.py runs them.

    .venv/bin/python bench/suite.py                 # in this checkout
    .venv/bin/python bench/suite.py --fresh-clone   # `.ci/run` in a fresh clone of HEAD, as CI runs it

Records whether the component image was already built with every layer reused, had its code layers
rebuilt (sources changed since) or was built cold: the builds run inside the e2e tier's container tests
and add their time there. Writes the section "Test suite wall (make test)" of
bench/RESULTS.md, with the run it replaces kept as one line below the table (before and after on the same
machine); nothing is written when a tier fails.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def image_id() -> str:
    """The component image's id ('' when podman does not hold it): compared before and after the run, it
    says whether the e2e tier's `make image` reused every layer or rebuilt the code layers."""
    sys.path.insert(0, str(ROOT))
    from components.image import KDFLOW_IMAGE

    conf = os.environ.get("CONTAINERS_CONF", str(ROOT / "docker/containers.conf"))
    try:
        done = subprocess.run(
            ["podman", "image", "inspect", "--format", "{{.Id}}", KDFLOW_IMAGE],
            env={**os.environ, "CONTAINERS_CONF": conf},
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def image_state(before: str, after: str) -> str:
    if not before:
        return "built cold inside the e2e tier"
    if before == after:
        return "already built, every layer reused"
    return "present, its code layers rebuilt inside the e2e tier (the sources changed since it was built)"


SECTION = "Test suite wall (make test)"


def tier_results(out: str) -> tuple[dict[str, str], list[str]]:
    """scripts/test_tiers.py's walls per tier and each tier's tests passed (its last summary lines), from its
    output; empty when a tier failed."""
    walls = re.search(r"all tiers passed\. Walls: (.*)", out)
    if not walls:
        return {}, []
    tiers = dict(pair.rsplit(" ", 2)[0:2] for pair in walls.group(1).replace(" s", "").split(", "))
    return tiers, re.findall(r"^(?:=+ )?(\d+) passed", out, re.M)[-len(tiers) :]


def head() -> str:
    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()


def pause_queue() -> int | None:
    """The background measurements of bench/queue_runner.py stopped while the suite is timed (their process group,
    resumed after): a nice-19 neighbour still takes cache and memory bandwidth."""
    from queue_runner import runner_pid

    pid = runner_pid()
    if pid is not None:
        os.killpg(pid, signal.SIGSTOP)
        print(f"bench/queue_runner.py's runner (process group {pid}) paused while the suite runs", flush=True)
    return pid


def previous_record() -> str:
    """The recorded run this one replaces, in one line (commit, date, each tier's wall), or ''."""
    results = ROOT / "bench" / "RESULTS.md"
    text = results.read_text() if results.is_file() else ""
    found = re.search(rf"<!-- {re.escape(SECTION)}:start -->(.*?)<!-- {re.escape(SECTION)}:end -->", text, re.S)
    if not found:
        return ""
    block = found.group(1)
    date = re.search(r"- date: (.*)", block)
    commit = re.search(r"^Commit (\w+)", block, re.M)
    walls = re.findall(r"^\| \*{0,2}(unit|integration|e2e|all)\*{0,2} \| \*{0,2}(\d+)\*{0,2} \|", block, re.M)
    if not (date and commit and walls):
        return ""
    tiers = ", ".join(f"{tier} {wall} s" for tier, wall in walls)
    return f"Previous record (commit {commit.group(1)}, {date.group(1)}): {tiers}."


def main() -> int:
    before = previous_record()
    image_before = image_id()
    paused = pause_queue()
    started = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, str(ROOT / "scripts/test_tiers.py"), "unit", "integration", "e2e", "--", "-q"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
    finally:
        wall = time.monotonic() - started
        if paused:
            os.killpg(paused, signal.SIGCONT)
    sys.stdout.write(proc.stdout[-3000:])
    tiers, counts = tier_results(proc.stdout)
    if proc.returncode != 0 or not tiers:
        print(f"a tier failed (exit {proc.returncode}); nothing recorded", file=sys.stderr)
        return 1
    rows = [f"| {t} | {tiers[t]} | {counts[i] if i < len(counts) else '?'} |" for i, t in enumerate(tiers)]
    body = (
        f"Commit {head()}; component image {image_state(image_before, image_id())}; "
        + ("the background queue (bench/queue_runner.py) paused meanwhile; " if paused else "")
        + f"integration and e2e on {os.environ.get('KDFLOW_TEST_WORKERS', '2')} pytest-xdist "
        "workers (scripts/test_tiers.py).\n\n| tier | wall s | tests passed |\n|---|---|---|\n"
        + "\n".join(rows)
        + f"\n| **all** | **{wall:.0f}** | |"
        + (f"\n\n{before}" if before else "")
    )
    print(body)
    write_section(SECTION, body)
    return 0


SECTION_FRESH = "Test suite wall, fresh clone (.ci/run)"


def fresh_clone() -> int:
    """`.ci/run` in a clone of HEAD in a new folder, as CI runs it: no venv, no wheelhouse, no .kdflow state
    (pip's download cache and podman's images are this machine's: the component image's layers are reused
    when it was built, and the section says so)."""
    image_before = image_id()
    paused = pause_queue()
    clone = Path(tempfile.mkdtemp(prefix="kdflow-fresh-"))
    started = time.monotonic()
    try:
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        proc = subprocess.run([str(clone / ".ci/run")], cwd=clone, capture_output=True, text=True)
    finally:
        wall = time.monotonic() - started
        if paused:
            os.killpg(paused, signal.SIGCONT)
        shutil.rmtree(clone, ignore_errors=True)
    sys.stdout.write(proc.stdout[-3000:])
    tiers, counts = tier_results(proc.stdout)  # the last summaries: make check's unit run comes first
    if proc.returncode != 0 or not tiers:
        print(f".ci/run failed (exit {proc.returncode}); nothing recorded", file=sys.stderr)
        return 1
    total = sum(int(v) for v in tiers.values())
    body = (
        f"Commit {head()}: `.ci/run` in a fresh clone took **{wall:.0f} s**: the virtualenv and its packages "
        f"(from pip's cache here), lint, types and make check's unit run, then `make test` ({total} s). Component "
        f"image {image_state(image_before, image_id())}"
        + ("; the background queue paused meanwhile" if paused else "")
        + ".\n\n| make test tier | wall s | tests passed |\n|---|---|---|\n"
        + "\n".join(f"| {t} | {tiers[t]} | {counts[i] if i < len(counts) else '?'} |" for i, t in enumerate(tiers))
        + f"\n| **make test** | **{total}** | |"
    )
    print(body)
    write_section(SECTION_FRESH, body)
    return 0


if __name__ == "__main__":
    sys.exit(fresh_clone() if sys.argv[1:] == ["--fresh-clone"] else main())
