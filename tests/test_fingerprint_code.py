"""Fingerprints see the code that shapes weights: an edit there retrains; an edit elsewhere does not."""

from __future__ import annotations

import shutil

import pytest

from kdflow.config import build_config
from kdflow.infra.fingerprint import PACKAGE, fingerprint, training_code_digest

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
