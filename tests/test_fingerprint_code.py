"""Fingerprints see the code that shapes weights: an edit there retrains; an edit elsewhere does not."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kdflow.config import build_config
from kdflow.config.sections import TrainConfig
from kdflow.infra.fingerprint import PACKAGE, defaults_snapshot, differences, fingerprint, training_code_digest

pytestmark = pytest.mark.unit


def test_every_fingerprint_carries_the_training_code_digest():
    cfg = build_config({})
    for role in ("teacher", "scratch", "distill", "assistant"):
        assert fingerprint(cfg, role, "d" * 64)["kdflow_code"] == training_code_digest()


@pytest.mark.parametrize("room, moves", [("training", True), ("models", True), ("data", True), ("evaluation", False)])
def test_an_edit_moves_the_digest_only_in_a_weight_shaping_room(tmp_path, room, moves):
    copy = tmp_path / "kdflow"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    before = training_code_digest(copy)
    assert before == training_code_digest()  # the digest is of the content, not the place
    target = sorted((copy / room).glob("*.py"))[-1]
    target.write_text(target.read_text() + "\n# an edit\n")
    assert (training_code_digest.__wrapped__(copy) != before) is moves


GOLDEN_DEFAULTS = Path(__file__).parent / "golden" / "fingerprint_defaults.json"


def test_a_moved_default_moves_the_defaults_version():
    """Fields at their default are left out of fingerprints, so a changed default must change every fingerprint
    through DEFAULTS_VERSION (bump it, then `make golden`); a new field needs nothing."""
    golden, now = json.loads(GOLDEN_DEFAULTS.read_text()), defaults_snapshot()
    moved = {k: (v, now["defaults"][k]) for k, v in golden["defaults"].items() if now["defaults"].get(k, v) != v}
    if now["version"] == golden["version"]:
        assert not moved, f"defaults moved {moved}: bump kdflow.infra.fingerprint.DEFAULTS_VERSION, run make golden"


def test_an_upgrade_adding_a_field_at_its_default_keeps_the_fingerprint():
    class TrainWithANewKnob(TrainConfig):
        new_knob: int = 0  # what an upgrade adds, at the default that keeps the old behaviour

    old = build_config({})
    new = old.model_copy(update={"train": TrainWithANewKnob(**old.train.model_dump())})
    assert fingerprint(new, "scratch", "d") == fingerprint(old, "scratch", "d")
    new.train.new_knob = 3  # type: ignore[attr-defined]
    assert differences(fingerprint(old, "scratch", "d"), fingerprint(new, "scratch", "d")) == "train.new_knob None -> 3"


def test_each_role_depends_only_on_the_fields_it_reads():
    generator = {"generator": {"iterations": 40, "width": 16}}
    kd = build_config({"distill": {"method": "kd", "dkd_beta": 2.0, "ensemble": "mean_logits", **generator}})
    fp = fingerprint(kd, "distill", "d")
    assert not [k for k in fp if k.startswith(("distill.generator.", "distill.dkd_")) or k == "distill.ensemble"]
    assert fingerprint(kd, "teacher", "d") == fingerprint(build_config({}), "teacher", "d")  # no distill field
    assert "distill.dkd_beta" in fingerprint(
        build_config({"distill": {"method": "dkd", "dkd_beta": 2.0}}), "distill", "d"
    )
    dfad = build_config({"distill": {"method": "dfad", "data_free": True, **generator}})
    assert fingerprint(dfad, "distill", "d")["distill.generator.iterations"] == 40
    assert fingerprint(build_config({"distill": {"temperature": 2.0}}), "distill", "d")["distill.temperature"] == 2.0
