"""User-facing errors: one line that names the field and the fix.

The CLI turns any KdflowError into ``kdflow: error: <message>`` and exit code 2, without a
traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class KdflowError(Exception):
    """An error the user can fix: ``field: problem; fix: what to do``."""

    def __init__(self, field: str, problem: str, fix: str):
        self.field = field
        self.problem = problem
        self.fix = fix
        super().__init__(f"{field}: {problem}; fix: {fix}")


class ConfigError(KdflowError):
    pass


class DataError(KdflowError):
    pass


class ModelError(KdflowError):
    pass


class CheckpointError(KdflowError):
    pass


class TrainingDiverged(KdflowError):
    pass


class StorageError(KdflowError):
    pass


class TrackingError(KdflowError):
    pass


class ExportError(KdflowError):
    pass


class GateError(KdflowError):
    pass
