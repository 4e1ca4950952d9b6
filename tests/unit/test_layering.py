"""Imports point one way: services -> strategies, brokers -> engine (DESIGN.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {
    "engine": {"strategies", "brokers", "services"},
    "strategies": {"brokers", "services"},
    "brokers": {"strategies", "services"},
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_downwards(package):
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) & FORBIDDEN[package])
        for path in (ROOT / package).rglob("*.py")
    }
    assert {file: bad for file, bad in offenders.items() if bad} == {}


def imported_modules(path: Path) -> set[str]:
    """Every absolute module name ``path`` imports, at module level or inside a function."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def room_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "services" else None


# services/ in rooms: the daemons, their runtime, the commands. The daemons see only the
# service loop of the runtime; the runtime (assembly, the process hosts) builds the daemons;
# nothing below the command line imports a command.
ROOMS = ("daemons", "runtime", "commands")
ALLOWED = {
    "daemons": {"daemons", "runtime.loop"},
    "runtime": {"daemons", "runtime"},
    "commands": {"daemons", "runtime", "commands"},
}


def test_services_is_split_into_rooms() -> None:
    loose = sorted(p.name for p in (ROOT / "services").glob("*.py") if p.name != "__init__.py")
    assert loose == [], "every module of services/ lives in a room"
    assert {
        p.name for p in (ROOT / "services").iterdir() if p.is_dir() and p.name != "__pycache__"
    } == set(ROOMS)


@pytest.mark.parametrize("room", ROOMS)
def test_rooms_import_one_way(room: str) -> None:
    allowed = ALLOWED[room]
    offenders: dict[str, list[str]] = {}
    for path in sorted((ROOT / "services" / room).rglob("*.py")):
        bad = []
        for module in imported_modules(path):
            target = room_of(module)
            if target is None or target not in ROOMS:
                continue  # outside services/, or the bare package
            inside = module.split(".", 1)[1]
            if not any(inside == a or inside.startswith(a + ".") or a == target for a in allowed):
                bad.append(module)
        if bad:
            offenders[str(path.relative_to(ROOT))] = sorted(bad)
    assert offenders == {}


def test_the_service_loop_imports_nothing_of_services() -> None:
    modules = imported_modules(ROOT / "services" / "runtime" / "loop.py")
    assert sorted(m for m in modules if m.startswith("services")) == []
