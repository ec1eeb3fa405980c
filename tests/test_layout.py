"""The library's rooms: each package says what it owns, no module grows past 350 lines, imports flow one way.

Module-level imports only: a function may import a later room lazily (noted in its package docstring).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

SRC = Path(__file__).resolve().parent.parent / "src" / "kdflow"
MAX_LINES = 350
EARLIER = ["errors", "config", "models", "infra", "data", "training", "evaluation", "release", "steps", "tune", "cli"]
# What each room may import at module level, beyond itself and the rooms listed before it that it needs.
ALLOWED = {
    "errors": set(),
    "config": {"errors"},
    "models": {"errors", "config"},
    "infra": {"errors", "config", "models"},  # checkpoints rebuild the architecture they name
    "data": {"errors", "config", "infra"},
    "training": {"errors", "config", "infra", "data", "models", "evaluation"},  # per-epoch validation metrics
    "evaluation": {"errors", "config", "infra", "data", "models"},
    "release": {"errors", "config", "infra", "data", "models", "evaluation"},
    "steps": {"errors", "config", "infra", "data", "models", "training", "evaluation", "release"},
    "tune": {"errors", "config", "infra", "data", "models", "training", "evaluation", "release", "steps"},
    "cli": {"errors", "config", "infra", "data", "models", "training", "evaluation", "release", "steps", "tune"},
}


def _room(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 or rel.name != "__init__.py" else ""


def _modules():
    return sorted(p for p in SRC.rglob("*.py"))


def _top_level_kdflow_imports(path: Path) -> set[str]:
    rooms = set()
    for node in ast.parse(path.read_text()).body:  # module level only
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] if node.module != "kdflow" else [f"kdflow.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for n in names:
            parts = n.split(".")
            if parts[0] == "kdflow" and len(parts) > 1 and parts[1] != "__version__":
                rooms.add(parts[1])
    return rooms


def test_every_room_is_a_package_with_a_docstring_or_a_single_module():
    for room in EARLIER:
        pkg, mod = SRC / room, SRC / f"{room}.py"
        assert pkg.is_dir() or mod.is_file(), room
        if pkg.is_dir():
            assert ast.get_docstring(ast.parse((pkg / "__init__.py").read_text())), f"{room}/__init__.py: no docstring"
    strays = [p.name for p in SRC.glob("*.py") if p.stem not in {"__init__", *EARLIER}]
    assert not strays, f"modules outside the rooms: {strays}; fix: move them into the package that owns them"


def test_no_module_over_the_limit():
    long = {str(p.relative_to(SRC)): n for p in _modules() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}; fix: split them by concern"


def test_imports_flow_one_way():
    bad = []
    for p in _modules():
        room = _room(p)
        if not room:
            continue
        for target in _top_level_kdflow_imports(p) - {room} - ALLOWED[room]:
            bad.append(f"{p.relative_to(SRC)} imports kdflow.{target}")
    assert not bad, "\n".join(bad)
