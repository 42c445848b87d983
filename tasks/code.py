"""The task's own code: its evaluator and its data loader, loaded from the task folder.

Loaded once by the worker before any recipe runs, from outside the program,
so nothing a recipe writes can change how it is judged.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from arl.tasks.manifest import Task, TaskError


# In-process workers load a task's code from several threads at once: without the lock
# a second thread finds the module in sys.modules before the first has executed it.
_LOADING = threading.Lock()


def _load(task: Task, filename: str) -> ModuleType:
    with _LOADING:
        return _load_once(task, filename)


def _load_once(task: Task, filename: str) -> ModuleType:
    path = task.folder / filename
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    name = f"arl_task_{task.name.replace('-', '_')}_{path.stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise TaskError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        raise TaskError(f"{path} fails to load: {type(e).__name__}: {e}") from e
    return module


@dataclass(frozen=True)
class Evaluator:
    """A task's scoring code, with the identity recorded on every evaluation."""

    name: str
    version: str
    digest: str
    module: ModuleType

    def evaluate(self, ctx: Any) -> Any:
        return self.module.evaluate(ctx)


def load_evaluator(task: Task) -> Evaluator:
    module = _load(task, "evaluator.py")
    if not callable(getattr(module, "evaluate", None)):
        raise TaskError(f"{task.folder / 'evaluator.py'} defines no evaluate(ctx) function")
    digest = hashlib.sha256((task.folder / "evaluator.py").read_bytes()).hexdigest()
    return Evaluator(task.name, str(getattr(module, "VERSION", "0")), digest, module)


def cache_root() -> Path:
    return Path(os.environ.get("ARL_CACHE") or Path.home() / ".cache" / "arl").expanduser()


@dataclass(frozen=True)
class TaskData:
    root: Path
    train: Path
    heldout: Path

    def digest(self) -> str:
        """sha256 over every data file (names and contents); cached until a file changes."""
        files = sorted(p for part in (self.train, self.heldout) for p in part.rglob("*") if p.is_file())
        stamp = hashlib.sha256(
            "".join(f"{p.relative_to(self.root)}:{p.stat().st_size}:{p.stat().st_mtime_ns};" for p in files).encode()
        ).hexdigest()
        memo = self.root / ".arl-digest"
        if memo.is_file():
            known, _, value = memo.read_text().partition(" ")
            if known == stamp:
                return value.strip()
        h = hashlib.sha256()
        for p in files:
            h.update(str(p.relative_to(self.root)).encode() + b"\0")
            with p.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        value = h.hexdigest()
        try:
            memo.write_text(f"{stamp} {value}")
        except OSError:
            pass  # a read-only cache only costs a recomputation next time
        return value


def training_feed(task: Task, data: TaskData, seed: int) -> bytes | None:
    """The training bytes a run of ``task`` reads on stdin, or None where it reads ``ARL_DATA``.

    A task with ``budgets.train_tokens`` fixes what one run may learn from: its
    ``data.feed(train, seed, tokens)`` picks exactly that many bytes for the seed,
    and the runner hands over nothing else (the training folder stays hidden).
    """
    tokens = task.budgets.train_tokens
    if tokens is None:
        return None
    module = _load(task, "data.py")
    if not callable(getattr(module, "feed", None)):
        raise TaskError(f"task {task.name} sets budgets.train_tokens but {task.folder / 'data.py'} "
                        "defines no feed(train, seed, tokens); add one or drop the budget")
    fed = bytes(module.feed(data.train, seed, tokens))
    if len(fed) != tokens:
        raise TaskError(f"{task.folder / 'data.py'}: feed gave {len(fed)} bytes for seed {seed}, "
                        f"budgets.train_tokens is {tokens}; it must give exactly the budget")
    return fed


def prepare_data(task: Task) -> TaskData:
    """Fetch and decode the task's data once (``data.prepare``); later calls are cheap."""
    root = cache_root() / task.name
    module = _load(task, "data.py")
    root.mkdir(parents=True, exist_ok=True)
    try:
        module.prepare(root)
    except TaskError:
        raise
    except Exception as e:
        help_text = getattr(module, "MISSING_HELP", "")
        raise TaskError(
            f"data for task {task.name} could not be prepared in {root}: "
            f"{type(e).__name__}: {e}. {help_text}".strip()
        ) from e
    data = TaskData(root=root, train=root / "train", heldout=root / "heldout")
    data.train.mkdir(exist_ok=True)
    data.heldout.mkdir(exist_ok=True)
    return data
