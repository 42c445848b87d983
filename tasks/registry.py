"""Finding tasks: built-in ones by name, others by path or on ARL_TASK_PATH."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from arl.ledger.events import SearchStarted
from arl.tasks.adapters import bind
from arl.tasks.manifest import Budgets, Objective, Run, Surface, Task, TaskError, load_task

BUILTIN = Path(__file__).resolve().parent / "builtin"


def search_path() -> list[Path]:
    """Folders holding task folders: ARL_TASK_PATH (os.pathsep-separated), then built-ins."""
    extra = [Path(p).expanduser() for p in os.environ.get("ARL_TASK_PATH", "").split(os.pathsep) if p]
    return [*extra, BUILTIN]


def available() -> list[Path]:
    """Every task folder on the search path, by name (the first of a name wins)."""
    seen: dict[str, Path] = {}
    for root in search_path():
        if not root.is_dir():
            continue
        for manifest in sorted(root.glob("*/task.toml")):
            seen.setdefault(manifest.parent.name, manifest.parent)
    return list(seen.values())


def resolve(name_or_path: str) -> Task:
    """A task by folder path, or by name on the search path."""
    path = Path(name_or_path).expanduser()
    if (path / "task.toml").is_file():
        return load_task(path)
    for folder in available():
        if folder.name == name_or_path:
            return load_task(folder)
    names = ", ".join(f.name for f in available()) or "none"
    raise TaskError(
        f"no task named {name_or_path!r} (built-in and on ARL_TASK_PATH: {names}); "
        "give a task folder's path or one of those names"
    )


def task_of(started: SearchStarted, *, need_recipe: bool = True) -> Task:
    """The task a search runs, bound to its recorded checkout and data, checked unchanged."""
    if started.kind == "import":
        fmt = started.config.get("format", "another tool")
        raise TaskError(
            f"search {started.originator_id[:8]} ({started.name!r}) is an import from {fmt}: a record of trials "
            "run elsewhere, with no task folder, so nothing can be run in it; read it with arl sql, show, "
            "report or mcp, or start a new search on a task of yours"
        )
    task = bind(resolve(started.config.get("task_path") or started.task), recorded=started.config,
                need_recipe=need_recipe)
    if task.digest() != started.task_digest:
        raise TaskError(
            f"task {task.name} at {task.root} changed since search {started.originator_id[:8]} started "
            f"(digest {task.digest()[:12]}…, recorded {started.task_digest[:12]}…); "
            "restore the task folder or start a new search"
        )
    return task


def recorded_task(started: SearchStarted, surfaces: Iterable[str]) -> Task:
    """The task of a search that has no task folder (an import), as its record describes it.

    Enough to read the search through the ledger tools — its objective, its
    specialists as surfaces — and nothing to run: no command, no recipe.
    """
    names = sorted({s for s in surfaces if s}) or ["unknown"]
    fmt = started.config.get("format", "another tool")
    return Task(
        name=started.task, description=f"imported from {fmt}; nothing of it can be run here",
        run=Run(command=[]),
        objective=Objective(metric=str(started.config.get("score") or "score"), direction=started.direction),
        budgets=Budgets(train_s=0.0, eval_s=0.0, wallclock_s=0.0),
        surfaces=[Surface(name=n, description=f"the trials {n} made in {fmt}", files=[]) for n in names],
    )
