"""Which command runs what: the step commands vs the all-in-one `kdflow run` (no training here)."""

from __future__ import annotations

import pytest

from kdflow import steps
from kdflow.cli import main

pytestmark = pytest.mark.unit
QUIET = ["--set", "tracking.enabled=false"]


@pytest.fixture
def run_all_calls(monkeypatch):
    calls = []

    def fake_run_all(cfg, out, ctx, data_dir=None, teacher=None, scratch=False, fresh=False):
        calls.append({"out": str(out), "data_dir": data_dir, "teacher": teacher, "scratch": scratch})

    monkeypatch.setattr(steps, "run_all", fake_run_all)  # the orchestration itself is tested end to end (slow tier)
    return calls


def test_run_is_the_all_in_one_command(run_all_calls, tmp_path):
    assert main(["run", "--scratch", "--out", str(tmp_path), *QUIET]) == 0
    assert run_all_calls == [{"out": str(tmp_path), "data_dir": None, "teacher": None, "scratch": True}]


def test_distill_without_data_keeps_its_all_in_one_meaning(run_all_calls, tmp_path, capsys):
    assert main(["distill", "--out", str(tmp_path), *QUIET]) == 0
    assert len(run_all_calls) == 1 and run_all_calls[0]["data_dir"] is None
    assert "`kdflow run` is that command" in capsys.readouterr().err


def test_distill_step_needs_a_teacher(run_all_calls, tmp_path, capsys):
    code = main(["distill", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"), *QUIET])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("kdflow: error: --teacher:") and "\n" not in err
    assert run_all_calls == [] and not (tmp_path / "out").exists()
