"""Write one named section of bench/RESULTS.md, with the machine, versions, command and date."""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import sys
from pathlib import Path

# KDFLOW_RESULTS: another checkout's RESULTS.md (bench/queue_runner.py runs jobs from a worktree at a fixed
# commit; their sections belong in the working checkout)
RESULTS = Path(os.environ.get("KDFLOW_RESULTS") or Path(__file__).parent / "RESULTS.md")
HEADER = "# kdflow benchmark results\n\nEvery figure below was measured by the script named in its section; none is edited by hand.\n"


def machine() -> str:
    import torch

    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnxruntime

    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, "
        f"torch threads {torch.get_num_threads()}, Python {platform.python_version()}"
    )


def write_section(name: str, body: str) -> Path:
    text = RESULTS.read_text() if RESULTS.is_file() else HEADER
    cmd = " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    block = (
        f"<!-- {name}:start -->\n## {name}\n\n- date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M UTC}\n"
        f"- machine: {machine()}\n- command: `.venv/bin/python {cmd}`\n\n{body.rstrip()}\n<!-- {name}:end -->\n"
    )
    pattern = re.compile(rf"<!-- {re.escape(name)}:start -->.*?<!-- {re.escape(name)}:end -->\n", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block
    tmp = RESULTS.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(RESULTS)
    return RESULTS
