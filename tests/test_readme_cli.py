"""The README's step-by-step CLI, run verbatim: each command writes where the next one reads."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest
from helpers import ROOT
from PIL import Image

from kdflow.data import prepared as data

pytestmark = pytest.mark.e2e


def readme_steps() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- step-cli -->\s*```bash\n(.*?)```", text, re.S)
    assert block, "README lost its step-cli block"
    return [line.split() for line in block.group(1).splitlines() if line.startswith("kdflow ")]


def test_readme_step_sequence_chains(tmp_path, fashion_available):
    steps = readme_steps()
    assert [s[1] for s in steps] == [
        "prep",
        "train-teacher",
        "train-student",
        "distill",
        "evaluate",
        "export",
        "promote",
        "predict",
    ]
    shutil.copytree(ROOT / "configs", tmp_path / "configs")  # the CLI's default config, found from the cwd
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    for argv in steps:
        if argv[1] == "predict":  # the README's example images: two test images as PNG
            test = data.load_prepared(tmp_path / "runs" / "data").test
            for i, name in enumerate(("image1.png", "image2.png")):
                Image.fromarray(test.x[i, 0].numpy()).save(tmp_path / name)
        proc = subprocess.run(
            [sys.executable, "-m", "kdflow.cli", *argv[1:]],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
            timeout=600,
        )
        assert proc.returncode == 0, f"{' '.join(argv)}\n{proc.stderr[-3000:]}"
    runs = tmp_path / "runs"
    for step_dir in ("data", "teacher", "scratch", "student", "eval", "export"):
        assert (runs / step_dir / "step.json").is_file(), step_dir
    assert (runs / "student" / "model.pt").is_file()  # the distill step writes into --out itself
    assert (runs / "promote" / "promotion.json").is_file()
    assert proc.stdout.count(".png\t") == 2  # predict: one line per image
