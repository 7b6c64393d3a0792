"""The architecture's import rules (DESIGN.md decision 2), checked on the source."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "src" / "inferswarm"


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def imports_of(subpackage: str) -> dict[Path, set[str]]:
    return {path: imported_modules(path) for path in (PACKAGE / subpackage).rglob("*.py")}


def offenders(subpackage: str, forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{path.relative_to(PACKAGE)} imports {module}"
        for path, modules in imports_of(subpackage).items()
        for module in sorted(modules)
        if module.startswith(forbidden)
    ]


def test_router_never_imports_miner() -> None:
    assert offenders("router", ("inferswarm.miner",)) == []


def test_miner_never_imports_router() -> None:
    assert offenders("miner", ("inferswarm.router",)) == []


def test_protocol_imports_nothing_else_from_inferswarm() -> None:
    bad = [
        f"{path.relative_to(PACKAGE)} imports {module}"
        for path, modules in imports_of("protocol").items()
        for module in modules
        if module.startswith("inferswarm") and not module.startswith("inferswarm.protocol")
    ]
    assert bad == []


def test_openai_compat_is_shared_and_neutral() -> None:
    assert offenders("openai_compat", ("inferswarm.router", "inferswarm.miner")) == []


def test_telemetry_is_shared_pure_and_neutral() -> None:
    """Router and miner both use it, so it imports neither, and does no I/O."""
    io_modules = {"asyncio", "time", "socket", "httpx", "fastapi", "starlette", "os", "psutil"}
    for path, modules in imports_of("telemetry").items():
        assert not any(m.startswith("inferswarm.") for m in modules), path
        assert modules & io_modules == set(), path


def test_storage_knows_nothing_of_router_or_miner() -> None:
    forbidden = ("inferswarm.router", "inferswarm.miner", "inferswarm.openai_compat")
    assert offenders("storage", forbidden) == []


def test_segmentation_decisions_are_pure() -> None:
    """Chunking, grouping and the batch budget: no I/O, no clock, no event loop."""
    io_modules = {"asyncio", "time", "socket", "httpx", "fastapi", "starlette", "os", "sqlalchemy"}
    for name in ("mapreduce.py", "fanout.py", "batch.py"):
        modules = imported_modules(PACKAGE / "router" / "segment" / name)
        allowed_io = {"asyncio"} if name == "fanout.py" else set()  # merging streams is async
        assert modules & (io_modules - allowed_io) == set(), name


def test_scheduler_is_pure() -> None:
    path = PACKAGE / "router" / "schedule.py"
    modules = imported_modules(path)
    io_modules = {"asyncio", "time", "socket", "httpx", "fastapi", "starlette", "os", "datetime"}
    assert modules & io_modules == set()
    assert all(
        not m.startswith("inferswarm.router.") or m == "inferswarm.router.schedule" for m in modules
    )
    # Randomness only through a generator seeded from the task, never the global one.
    random_uses = {
        node.attr
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "random"
    }
    assert random_uses <= {"Random"}


@pytest.mark.parametrize("probe", ["router", "miner"])
def test_checker_catches_a_violation(tmp_path: Path, probe: str) -> None:
    other = "miner" if probe == "router" else "router"
    bad = tmp_path / "bad.py"
    bad.write_text(f"from inferswarm.{other}.x import y\n")
    assert any(m.startswith(f"inferswarm.{other}") for m in imported_modules(bad))
