"""What binds a release to its inputs: the export names the student bytes and the data it judged, and so
does the evaluation it took its quality gate from, so a gate cannot be borrowed from another student's
export or evaluation, nor read on other data.

Checked where each link is used: export checks its --evaluation, promote checks its --export. A break is
one line naming the directory and the fix; ``--force`` (which overrides a failed gate) never overrides it.
"""

from __future__ import annotations

from pathlib import Path

from kdflow.errors import CheckpointError
from kdflow.infra.io import sha256_file


def student_sha256(student_dir: Path) -> str:
    """The digest of the student's weights file: what an evaluation and an export were of."""
    return sha256_file(Path(student_dir) / "model.pt")


def check_link(recorded: dict, field: str, where: Path, student_sha: str, data_digest: str, redo: str) -> None:
    """``recorded`` (an evaluation.json or an export's result) must name this student and this data."""
    theirs = recorded.get("student_sha256")
    if theirs is None:
        raise CheckpointError(
            field, f"'{where}' records no student digest (written by an older kdflow)", f"{redo} again"
        )
    if theirs != student_sha:
        raise CheckpointError(
            field,
            f"'{where}' is of another student (model.pt sha256 {theirs[:12]}, this student's {student_sha[:12]})",
            f"{redo} for this student",
        )
    if recorded.get("data_digest") != data_digest:
        raise CheckpointError(
            field,
            f"'{where}' judged other data (digest {str(recorded.get('data_digest'))[:12]}, --data's "
            f"{data_digest[:12]})",
            f"{redo} on this --data",
        )
