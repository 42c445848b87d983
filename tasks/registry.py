"""Finding tasks: built-in ones by name, others by path or on ARL_TASK_PATH."""

from __future__ import annotations

import os
from pathlib import Path

from arl.ledger.events import SearchStarted
from arl.tasks.adapters import bind
from arl.tasks.manifest import Task, TaskError, load_task

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
    task = bind(resolve(started.config.get("task_path") or started.task), recorded=started.config,
                need_recipe=need_recipe)
    if task.digest() != started.task_digest:
        raise TaskError(
            f"task {task.name} at {task.root} changed since search {started.originator_id[:8]} started "
            f"(digest {task.digest()[:12]}…, recorded {started.task_digest[:12]}…); "
            "restore the task folder or start a new search"
        )
    return task
