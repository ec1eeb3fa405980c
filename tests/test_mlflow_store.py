"""A new local sqlite MLflow store is copied from a cached empty schema: the same tables, indexes and Alembic
revision MLflow's own migrations make, the Default experiment made by MLflow for the store that opens it, an
existing store never touched, and no usable cache leaves the store to MLflow."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest

from kdflow.infra import mlflow_store

pytestmark = pytest.mark.integration


def _schema(db: Path) -> tuple[list, list]:
    """Every table and index with its columns and constraints; their order inside a CREATE statement is not
    compared (MLflow's batch migrations rebuild tables in set order: two stores it migrates differ there)."""
    with contextlib.closing(sqlite3.connect(db)) as con:
        rows = con.execute("SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")
        sql = sorted(
            (kind, name, sorted(line.strip().rstrip(",") for line in text.splitlines())) for kind, name, text in rows
        )
        revision = con.execute("SELECT version_num FROM alembic_version").fetchall()
    return sql, revision


def test_a_seeded_store_is_the_store_mlflow_makes(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("KDFLOW_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "own").mkdir()
    (tmp_path / "seeded").mkdir()
    own = tmp_path / "own" / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{own}").search_experiments()  # MLflow migrates it itself

    seeded = tmp_path / "seeded" / "mlflow.db"
    assert mlflow_store.seed_sqlite_store(f"sqlite:///{seeded}")
    assert mlflow_store.template_path().is_file()
    assert _schema(seeded) == _schema(own)
    (default,) = mlflow.MlflowClient(f"sqlite:///{seeded}").search_experiments()
    assert (default.experiment_id, default.name) == ("0", "Default")
    assert default.artifact_location == str(tmp_path / "mlruns" / "0")  # what MLflow gives a store opened here

    # an existing store is never replaced, not even by a second seeding
    before = seeded.read_bytes()
    assert not mlflow_store.seed_sqlite_store(f"sqlite:///{seeded}")
    assert seeded.read_bytes() == before
    assert sorted(p.name for p in seeded.parent.iterdir()) == ["mlflow.db"]  # no temp file left

    # other URI kinds and missing directories are left to MLflow
    assert not mlflow_store.seed_sqlite_store("http://127.0.0.1:5000")
    assert not mlflow_store.seed_sqlite_store(f"sqlite:///{tmp_path / 'absent' / 'mlflow.db'}")


def test_a_damaged_or_unwritable_cache_leaves_the_store_to_mlflow(tmp_path, monkeypatch):
    import mlflow

    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("KDFLOW_CACHE_DIR", str(cache))
    mlflow_store.template_path().write_bytes(b"not a database")  # damaged: rebuilt
    (tmp_path / "a").mkdir()
    assert mlflow_store.seed_sqlite_store(f"sqlite:///{tmp_path / 'a' / 'mlflow.db'}")
    assert [e.name for e in mlflow.MlflowClient(f"sqlite:///{tmp_path / 'a' / 'mlflow.db'}").search_experiments()] == [
        "Default"
    ]

    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("KDFLOW_CACHE_DIR", str(blocker / "cache"))  # cannot be made
    (tmp_path / "b").mkdir()
    assert not mlflow_store.seed_sqlite_store(f"sqlite:///{tmp_path / 'b' / 'mlflow.db'}")
    assert not (tmp_path / "b" / "mlflow.db").exists()
