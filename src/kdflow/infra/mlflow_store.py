"""A new local sqlite MLflow store starts from a cached empty schema instead of MLflow's migrations.

MLflow builds a fresh sqlite store by running every Alembic migration since its first schema: about 6 s of
CPU here, paid by every new state directory (every `make run` on a clean checkout, every test that tracks).
The schema it ends with depends only on the MLflow version, so kdflow builds it once per version, with MLflow
itself in a temporary directory, empties its ``experiments`` table (the Default experiment records the
artifact root of the store that made it), and copies that file to a new store's path. MLflow then finds all
its tables and creates the Default experiment (id 0) itself, with the artifact root of the store opening it.

The cache is ``$KDFLOW_CACHE_DIR`` (default ``$XDG_CACHE_HOME/kdflow``, else ``~/.cache/kdflow``). Anything
that goes wrong here (a read-only home, a damaged template) leaves the store to MLflow, as before: this only
saves time, it never decides what a store holds.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import sqlite3
import tempfile
from pathlib import Path

SQLITE_PREFIX = "sqlite:///"


def cache_dir() -> Path:
    base = os.environ.get("KDFLOW_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "kdflow"
    )
    return Path(base)


def template_path() -> Path:
    """The empty schema of this MLflow and SQLAlchemy (both shape the tables)."""
    import mlflow
    import sqlalchemy

    return cache_dir() / f"mlflow-{mlflow.__version__}-sqlalchemy-{sqlalchemy.__version__}-schema.db"


def _build_template(path: Path) -> None:
    """MLflow migrates an empty database in a temp dir; its Default experiment row is removed; renamed in."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".schema-") as tmp:
        db = Path(tmp) / "mlflow.db"
        store = SqlAlchemyStore(f"{SQLITE_PREFIX}{db}", Path(tmp, "artifacts").as_uri())
        store.engine.dispose()
        with contextlib.closing(sqlite3.connect(db)) as con:
            con.execute("DELETE FROM experiments")
            con.commit()
            con.execute("VACUUM")
            if con.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
                return
        os.replace(db, path)


def _is_schema(path: Path) -> bool:
    """A file this module built: a readable sqlite database with an Alembic revision and no experiment."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as con:
            revision = con.execute("SELECT version_num FROM alembic_version").fetchone()
            experiments = con.execute("SELECT count(*) FROM experiments").fetchone()[0]
    except sqlite3.Error:
        return False
    return bool(revision) and experiments == 0


def seed_sqlite_store(uri: str) -> bool:
    """Before MLflow opens ``uri``: a ``sqlite:///`` store that does not exist yet is created from the cached
    schema (built on first use). True when it was; False leaves everything to MLflow (another URI kind, an
    existing file, a missing directory, no usable cache)."""
    if not uri.startswith(SQLITE_PREFIX):
        return False
    db = Path(uri[len(SQLITE_PREFIX) :])
    if db.exists() or not db.parent.is_dir():
        return False
    try:
        template = template_path()
        if not _is_schema(template):
            _build_template(template)
            if not _is_schema(template):
                return False
    except Exception:  # noqa: BLE001 - a template that cannot be built leaves the store to MLflow
        return False
    try:
        tmp = db.parent / f".{db.name}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as to MLflow's
        try:
            with os.fdopen(fd, "wb") as out, template.open("rb") as src:
                shutil.copyfileobj(src, out)
            os.link(tmp, db)  # never over a store another process made meanwhile
        finally:
            os.unlink(tmp)
    except OSError:
        return False
    return True
