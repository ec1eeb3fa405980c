"""The checkpoint a training step keeps in state_dir (kdflow.infra.running): what is copied, when, and where."""

from __future__ import annotations

import pytest

from kdflow.infra import running
from kdflow.steps.teacher_checkpoints import snapshot_files

pytestmark = pytest.mark.unit


def test_the_kept_checkpoint_follows_each_epoch_snapshots_once_and_restores_only_into_an_empty_out(tmp_path, capsys):
    out, kept = tmp_path / "out", running.folder(tmp_path / "state", "teacher", "k" * 20)
    ckpt = out / "train_state" / "checkpoint.pt"
    ckpt.parent.mkdir(parents=True)
    logged = []
    on_epoch = running.keeper(kept, out, ckpt, snapshot_files, logged.append)
    ckpt.write_bytes(b"epoch 0")
    (out / "model-epoch1.pt").write_bytes(b"snapshot 1")
    on_epoch({"epoch": 1})
    ckpt.write_bytes(b"epoch 1")
    (out / "model-epoch1.pt").write_bytes(b"rewritten")  # never happens in a step: shows the snapshot is not re-copied
    (out / "model.pt").write_bytes(b"not kept")  # only the checkpoint and the epoch snapshots are
    on_epoch({"epoch": 2})
    assert logged == [{"epoch": 1}, {"epoch": 2}]  # the step's own logger still runs, first
    assert (kept / "train_state" / "checkpoint.pt").read_bytes() == b"epoch 1"
    assert (kept / "model-epoch1.pt").read_bytes() == b"snapshot 1" and not (kept / "model.pt").exists()

    retried = tmp_path / "retried"  # a new, empty out: gets the checkpoint and the snapshots
    kept_for = running.open_kept(
        tmp_path / "state",
        "teacher",
        "k" * 20,
        retried,
        retried / "train_state" / "checkpoint.pt",
        fresh=False,
        step="train_teacher",
    )
    assert kept_for == kept and (retried / "train_state" / "checkpoint.pt").read_bytes() == b"epoch 1"
    assert (retried / "model-epoch1.pt").read_bytes() == b"snapshot 1"
    assert "[train_teacher] a new output folder: continuing from the checkpoint kept in" in capsys.readouterr().out

    ckpt.write_bytes(b"its own")  # an out with its own checkpoint resumes that one: nothing copied over it
    assert not running.restore(kept, out, ckpt) and ckpt.read_bytes() == b"its own"

    fresh = tmp_path / "fresh"  # --fresh: the kept folder is dropped, nothing restored
    running.open_kept(
        tmp_path / "state",
        "teacher",
        "k" * 20,
        fresh,
        fresh / "train_state" / "checkpoint.pt",
        fresh=True,
        step="train_teacher",
    )
    assert not kept.exists() and not fresh.exists()
