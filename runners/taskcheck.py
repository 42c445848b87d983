"""`arl task check`: validate a task folder and dry-run its base program through a real worker."""

from __future__ import annotations

import tempfile
from pathlib import Path

import msgspec

from arl.ledger import Ledger
from arl.ledger import events as ev
from arl.ledger.programs import read_folder
from arl.runners.devices import DeviceError, DevicePool, parse, shortfall
from arl.runners.search import path_lines
from arl.runners.trials import start_search, submit
from arl.runners.worker import Worker
from arl.tasks.adapters import bind, recorded_paths
from arl.tasks.code import load_evaluator, prepare_data
from arl.tasks.manifest import Task
from arl.tasks.registry import resolve


class CheckReport(msgspec.Struct, kw_only=True):
    task: str
    label: str | None = None
    score: float | None = None
    reason: str = ""
    wall_s: float | None = None
    checks: list[ev.Check] = []
    #: Where the checkout and data came from, and the devices the base program ran on.
    paths: list[str] = []


def check_task(name_or_path: str, *, run: bool = True, recipe_from: str | None = None,
               data: str | None = None, devices: str | None = None) -> tuple[Task, CheckReport]:
    """Load and validate the manifest, the evaluator and the data; then run the base program once.

    Adapter tasks are bound first: their base program copied from the checkout
    (``recipe_from``), their data linked (``data``); see ``tasks.adapters``. The base
    program runs on ``devices`` (``--devices`` as given; None: the visible GPUs, when the
    task needs them).
    """
    task = bind(resolve(name_or_path), recipe_from=recipe_from, data=data)
    load_evaluator(task)
    prepare_data(task)
    report = CheckReport(task=task.name, paths=path_lines(task))
    if not run:
        return task, report
    found = parse(devices) if devices is not None or task.needs.gpus else None
    if found is not None:
        why = shortfall(task.needs.gpus, found)
        if why is not None:
            raise DeviceError(f"task {task.name}: {why}; or check it without running (--no-run)")
        report.paths.append(f"  devices  {found.describe()}")
    with tempfile.TemporaryDirectory(prefix="arl-task-check-") as tmp:
        with Ledger.open(f"sqlite:///{Path(tmp) / 'check.db'}") as ledger:
            search = start_search(ledger, task, name=f"task check {task.name}", kind="check",
                                  config=recorded_paths(task))
            trial = submit(ledger, task, search, 0, agent="baseline", surface="",
                           program=read_folder(task.recipe_dir))
            pool = DevicePool(found) if found is not None and found.ids else None
            Worker(ledger, name="task-check", pool=pool).run(exit_when_idle=True)
            for event in ledger.stream(trial):
                if isinstance(event, ev.RunFinished):
                    report.wall_s = event.wall_s
                elif isinstance(event, ev.TrialEvaluated):
                    report.checks = list(event.checks)
                elif isinstance(event, ev.TrialLabeled):
                    report.label, report.score, report.reason = event.label.value, event.score, event.reason
    return task, report
