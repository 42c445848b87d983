"""The rooms point one way, and arl installs one import name.

ledger ← tasks ← agents / queries ← runners: every import between rooms —
at module level, inside functions, under TYPE_CHECKING — goes with that grain;
agents may read queries (the read-only SQL tool); nothing outside runners
imports runners; no module imports another module's private names; code says
``arl.ledger``, never a bare ``ledger``.
"""

from __future__ import annotations

import ast
import importlib.metadata
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROOMS = ("ledger", "tasks", "agents", "queries", "runners")
#: What each room may import besides itself.
ALLOWED = {
    "ledger": set(),
    "tasks": {"ledger"},
    "agents": {"ledger", "tasks", "queries"},
    "queries": {"ledger", "tasks"},
    "runners": {"ledger", "tasks", "agents", "queries"},
}


def _modules() -> list[tuple[str, Path]]:
    """(room, file) of every Python file of the rooms, recipes of built-in tasks excepted
    (they run in the sandbox and import nothing of arl)."""
    out = []
    for room in ROOMS:
        for path in sorted((ROOT / room).rglob("*.py")):
            if "recipe" in path.relative_to(ROOT).parts:
                continue
            out.append((room, path))
    return out


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """Every import in a file, wherever it is: (line, module, names imported from it)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: a relative import; write arl.ROOM.module"
            found.append((node.lineno, node.module or "", [a.name for a in node.names]))
    return found


def _room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "arl" and parts[1] in ROOMS else None


def test_every_import_between_rooms_goes_with_the_grain():
    against = []
    for room, path in _modules():
        for line, module, _ in _imports(path):
            target = _room(module)
            if target is not None and target != room and target not in ALLOWED[room]:
                against.append(f"{path.relative_to(ROOT)}:{line}: {room} imports {module}")
    assert not against, "imports against the grain (ledger ← tasks ← agents/queries ← runners):\n" + "\n".join(against)


def test_no_bare_room_names_and_no_private_names_of_other_modules():
    bad = []
    files = _modules() + [("tests", p) for p in sorted((ROOT / "tests").glob("*.py"))] \
        + [("benchmarks", p) for p in sorted((ROOT / "benchmarks").glob("*.py"))]
    for room, path in files:
        for line, module, names in _imports(path):
            if module.split(".")[0] in ROOMS:
                bad.append(f"{path.relative_to(ROOT)}:{line}: bare {module!r}; write arl.{module}")
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if room in ROOMS and _room(module) is not None and private:
                bad.append(f"{path.relative_to(ROOT)}:{line}: private {', '.join(private)} of {module}")
    assert not bad, "\n".join(bad)


def test_the_checker_sees_imports_inside_functions_and_type_checking(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from arl.runners.search import Search\n"
        "def f():\n    import arl.agents.tuner\n"
    )
    assert [(m, line) for line, m, _ in _imports(probe)] == [
        ("typing", 1), ("arl.runners.search", 3), ("arl.agents.tuner", 5)]


def test_installed_arl_has_one_top_level_name():
    dist = importlib.metadata.distribution("arl")
    assert (dist.read_text("top_level.txt") or "").split() == ["arl"]
    owners = {name for name, dists in importlib.metadata.packages_distributions().items() if "arl" in dists}
    assert owners == {"arl"}


def test_a_built_wheel_holds_only_the_arl_package(tmp_path):
    pip = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                          "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr
    (wheel,) = tmp_path.glob("arl-*.whl")
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert tops == {"arl", next(t for t in tops if t.endswith(".dist-info"))}
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[1] for n in names if n.startswith("arl/")} >= set(ROOMS)
    assert "arl/tasks/builtin/golf-mini/task.toml" in names and "arl/queries/prices.toml" in names
