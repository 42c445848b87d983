"""The contract between a worker and a task's evaluator.

A task's ``evaluator.py`` defines::

    VERSION = "1"                      # bump when scoring changes
    def evaluate(ctx: EvalContext) -> Evaluation: ...

The worker has already run the recipe once per seed (``ctx.runs``), each in a
fresh copy of the program with ``ARL_OUT`` pointing at that run's output
folder. The evaluator scores from those outputs and from held-out data the
recipe never saw (``ctx.heldout``); anything it must execute of the recipe's
(e.g. a model's forward pass) goes through ``ctx.run`` so it is sandboxed and
timed from outside like the training run. It never trusts a number the recipe
prints about itself.

A task's ``data.py`` defines ``prepare(cache: Path) -> None``, which fills
``cache/train`` (given read-only to the recipe as ``ARL_DATA``) and
``cache/heldout`` (only the evaluator sees it), and ``MISSING_HELP``: what to
download or where to point ``ARL_CACHE`` when it cannot fetch the data.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import msgspec

from arl.ledger.events import Check, Label
from arl.tasks.manifest import Task

__all__ = ["Check", "EvalContext", "Evaluation", "Label", "Process", "SeedRun"]


class Process(msgspec.Struct, kw_only=True):
    """How one sandboxed process ended, measured from outside it."""

    exit_code: int | None
    signal: int | None = None
    wall_s: float = 0.0
    cpu_s: float = 0.0
    peak_rss_mb: float = 0.0
    #: "wallclock" if killed at the hard limit, "memory" if killed for memory,
    #: "cancelled" if its runner shut down (the trial is released), else None.
    killed_for: str | None = None
    stdout_tail: str = ""
    stderr_tail: str = ""
    sandbox: str = "none"
    #: Unix time the process was spawned.
    started_at: float | None = None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.killed_for is None


class SeedRun(msgspec.Struct, kw_only=True):
    """One training run of the recipe, for one seed."""

    seed: int
    process: Process
    #: The program copy the run used (read-only for the evaluator's own runs).
    workspace: str
    #: Where the recipe wrote its artifacts (ARL_OUT).
    out: str


#: ``run(argv, cwd=..., timeout_s=..., stdin=None, env=None, readable=(), writable=None)``
#: -> Process: runs in the same sandbox and limits as training; ``stdin`` bytes are
#: fed to the process; ``cwd`` is read-only; the ``writable`` folders (``ctx.scratch``
#: when None) are writable — give each call a folder of its own so calls cannot pass
#: notes (``arl.tasks.outputs.call_folder``); ``readable`` ones (and the training data)
#: are read-only; held-out data stays hidden. Read what a call wrote with
#: ``arl.tasks.outputs`` (never through a link).
Runner = Callable[..., Process]


class EvalContext:
    """What an evaluator gets: the task, the runs, the held-out data, a way to run code."""

    def __init__(
        self,
        *,
        task: Task,
        runs: Sequence[SeedRun],
        heldout: Path,
        train_data: Path,
        run: Runner,
        scratch: Path,
    ) -> None:
        self.task = task
        self.runs = list(runs)
        self.heldout = heldout
        self.train_data = train_data
        self.run = run
        self.scratch = scratch


class Evaluation(msgspec.Struct, kw_only=True):
    """The evaluator's verdict: a score (None if there is none) and every check."""

    score: float | None
    metrics: Mapping[str, float] = {}
    checks: list[Check] = []
    #: Score per seed, where the task scores seeds separately.
    per_seed: dict[int, float] = {}
    #: False when the score (or a gate) is read from what the recipe printed about itself
    #: (the GPU adapters parse their logs): the program's claim, not a measurement.
    verified: bool = True

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]
