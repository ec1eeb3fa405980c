"""Run the test tiers in order (unit, integration, e2e), stop at the first failing one, print each tier's wall.

`make test` calls this; extra pytest arguments go after `--`: `python scripts/test_tiers.py unit e2e -- -x`.
The integration and e2e tiers run on KDFLOW_TEST_WORKERS pytest-xdist workers (default 2: their tests wait on
process starts, servers and containers about as much as they compute), one file per worker at a time so a
module's fixtures are built once; KDFLOW_TEST_WORKERS=0 runs them in this process, one test after another.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

TIERS = ("unit", "integration", "e2e")
PARALLEL_TIERS = ("integration", "e2e")  # the unit tier is faster than starting two workers


def _workers() -> list[str]:
    n = os.environ.get("KDFLOW_TEST_WORKERS", "2")
    if not n.isdigit():
        raise SystemExit(f"test_tiers: KDFLOW_TEST_WORKERS={n!r}; fix: a whole number (0 runs serially)")
    # --no-loadscope-reorder: xdist would otherwise hand out files by their number of tests, not in the
    # longest-first order tests/conftest.py sorts them into
    return ["-n", n, "--dist", "loadfile", "--no-loadscope-reorder"] if int(n) > 1 else []


def main(argv: list[str]) -> int:
    tiers, extra = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    unknown = [t for t in tiers if t not in TIERS]
    if unknown or not tiers:
        print(f"test_tiers: tiers: {unknown or 'none given'}; fix: name some of {', '.join(TIERS)}", file=sys.stderr)
        return 2
    walls: list[str] = []
    for tier in tiers:
        print(f"\n=== tier {tier} ===", flush=True)
        start = time.monotonic()
        parallel = [*_workers(), "--durations=12"] if tier in PARALLEL_TIERS else []  # the slowest, for the wall
        rc = subprocess.call([sys.executable, "-m", "pytest", "-m", tier, *parallel, *extra])
        walls.append(f"{tier} {time.monotonic() - start:.0f} s")
        if rc not in (0, 5):  # 5: no test in this tier was selected
            print(f"\n=== tier {tier} failed (pytest exit {rc}); later tiers not run. Walls: {', '.join(walls)}")
            return rc
    print(f"\n=== all tiers passed. Walls: {', '.join(walls)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
