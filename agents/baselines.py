"""What a user would otherwise reach for: random search and Optuna's TPE over the same knobs.

Both see the task's knobs and techniques of every surface as one search space
(techniques as on/off switches), propose complete configurations applied to the
base program, and learn only from the scores of their own trials (a failure
is a failed trial to TPE). Neither ever proposes the unchanged program or one
the search already ran: a draw that lands on one is drawn again (TPE is told
the score that program already has), and a space with nothing to move
proposes nothing. They run through the same driver, worker and ledger
as the specialists, so their trials are recorded and labelled alike.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

from arl.agents.base import Proposal
from arl.agents.lineage import LineageView
from arl.ledger.events import trial_id
from arl.ledger.programs import program_digest
from arl.ledger.projections import State
from arl.tasks.knobs import constants, format_value, parse_value, read, set_constant, write
from arl.tasks.manifest import Knob, Task, Technique


class _SearchSpace:
    """Every knob and technique of the task, and how to write a configuration into a program."""

    def __init__(self, task: Task) -> None:
        self.task = task
        self.knobs: list[Knob] = [k for s in task.surfaces for k in s.knobs]
        self.techniques: list[Technique] = [t for s in task.surfaces for t in s.techniques]

    def apply(self, base: dict[str, bytes], config: dict[str, object]) -> dict[str, bytes]:
        program = dict(base)
        for technique in self.techniques:
            if config.get(f"technique:{technique.name}"):
                for name, value in technique.set.items():
                    program = self._set(program, name, value)
                for edit in technique.edits:
                    text = program[edit.file].decode()
                    if text.count(edit.search) == 1:
                        program[edit.file] = text.replace(edit.search, edit.replace).encode()
        for knob in self.knobs:
            if knob.name in config:
                program[knob.file] = write(program[knob.file], knob.name, knob.where, config[knob.name])
        return program

    def _set(self, program: dict[str, bytes], name: str, value: object) -> dict[str, bytes]:
        knob = next((k for k in self.knobs if k.name == name), None)
        if knob is not None:
            program[knob.file] = write(program[knob.file], knob.name, knob.where, value)
            return program
        for path, data in program.items():
            if path.endswith(".py") and name in constants(data):
                program[path] = set_constant(data, name, value)
        return program

    def describe(self, config: dict[str, object], base: dict[str, bytes]) -> str:
        current = {k.name: parse_value(read(base.get(k.file, b""), k.name, k.where)) for k in self.knobs}
        changes = [f"{k} {format_value(current.get(k))} → {format_value(v)}" for k, v in config.items()
                   if not k.startswith("technique:") and current.get(k) != v]
        changes += [k.split(":", 1)[1] for k, v in config.items() if k.startswith("technique:") and v]
        return ", ".join(changes) or "the base configuration"


class _Baseline:
    """Shared plumbing: one proposer owning every surface, reading its own outcomes."""

    backend = ""

    def __init__(self, task: Task, *, seed: int, base: dict[str, bytes], state: Callable[[], State]) -> None:
        self.task = task
        self.space = _SearchSpace(task)
        self.name = self.backend
        self.surface = task.surfaces[0]
        self.base = base
        self.state = state
        self.seed = seed
        self.rng = random.Random(f"{seed}/{self.backend}")

    #: Draws tried before a proposer concludes every configuration it can reach has run.
    DRAWS = 64

    def _fresh(self, view: LineageView, program: dict[str, bytes]) -> bool:
        """Not the base program and not one the search already ran."""
        digest = program_digest(program)
        return digest != program_digest(self.base) and digest not in view.known_programs

    def _proposal(self, view: LineageView, config: dict[str, object]) -> tuple[Proposal, str]:
        program = self.space.apply(self.base, config)
        proposal = Proposal(
            agent=self.name, surface=self.surface.name, parents=(trial_id(view.search_id, 0),),
            hypothesis=f"{self.backend}: {self.space.describe(config, self.base)}",
            program=program, backend=self.backend,
            also_surfaces=tuple(s.name for s in self.task.surfaces[1:]),
        )
        return proposal, program_digest(program)

    def _outcome(self, digest: str, search_id: str) -> tuple[bool, float | None] | None:
        """(legal, score) of the trial that ran this program, once labelled; None before."""
        for row in self.state().trials.values():
            if row.search_id == search_id and row.program_digest == digest and row.label is not None:
                return row.label.legal or row.label.value == "duplicate", row.score
        return None


class RandomSearch(_Baseline):
    backend = "random"

    def propose(self, view: LineageView) -> Proposal | None:
        if view.best is None or not (self.space.knobs or self.space.techniques):
            return None
        # A function of seed and view position, so a replay draws the same samples.
        self.rng = random.Random(f"{self.seed}/random/{view.position}/{view.trials_so_far}")
        for _ in range(self.DRAWS):
            config: dict[str, object] = {k.name: _sample(k, self.rng) for k in self.space.knobs}
            for t in self.space.techniques:
                config[f"technique:{t.name}"] = self.rng.random() < 0.5
            if self._fresh(view, self.space.apply(self.base, config)):
                return self._proposal(view, config)[0]
        return None


class TPESearch(_Baseline):
    backend = "tpe"

    def __init__(self, task: Task, *, seed: int, base: dict[str, bytes], state: Callable[[], State]) -> None:
        super().__init__(task, seed=seed, base=base, state=state)
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self._optuna = optuna
        direction = "minimize" if task.objective.direction == "min" else "maximize"
        self.study = optuna.create_study(direction=direction,
                                         sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=5))
        self.pending: dict[str, object] = {}  # program digest → optuna trial

    def propose(self, view: LineageView) -> Proposal | None:
        if view.best is None or not (self.space.knobs or self.space.techniques):
            return None
        self._tell(view.search_id)
        for _ in range(self.DRAWS):
            trial = self.study.ask(self._distributions())
            config = dict(trial.params)
            program = self.space.apply(self.base, config)
            if self._fresh(view, program):
                proposal, digest = self._proposal(view, config)
                self.pending[digest] = trial
                return proposal
            # A program already run (or the base itself): TPE learns its known score, and draws again.
            outcome = self._outcome(program_digest(program), view.search_id)
            if outcome is not None and outcome[0] and outcome[1] is not None and math.isfinite(outcome[1]):
                self.study.tell(trial, outcome[1])
            else:
                self.study.tell(trial, state=self._optuna.trial.TrialState.FAIL)
        return None

    def _tell(self, search_id: str) -> None:
        for digest, trial in list(self.pending.items()):
            outcome = self._outcome(digest, search_id)
            if outcome is None:
                continue
            legal, score = outcome
            state = self._optuna.trial.TrialState
            if legal and score is not None and math.isfinite(score):
                self.study.tell(trial, score)
            else:
                self.study.tell(trial, state=state.FAIL)
            del self.pending[digest]

    def _distributions(self) -> dict[str, object]:
        d = self._optuna.distributions
        out: dict[str, object] = {}
        for k in self.space.knobs:
            if k.type == "int":
                out[k.name] = d.IntDistribution(int(k.min), int(k.max), log=k.log and k.min > 0)
            elif k.type == "float":
                out[k.name] = d.FloatDistribution(k.min, k.max, log=k.log and k.min > 0)
            elif k.type == "bool":
                out[k.name] = d.CategoricalDistribution([False, True])
            else:
                out[k.name] = d.CategoricalDistribution(list(k.choices))
        for t in self.space.techniques:
            out[f"technique:{t.name}"] = d.CategoricalDistribution([False, True])
        return out


def _sample(knob: Knob, rng: random.Random) -> object:
    if knob.type == "bool":
        return rng.random() < 0.5
    if knob.type == "choice":
        return rng.choice(knob.choices)
    lo, hi = float(knob.min), float(knob.max)
    if knob.log and lo > 0:
        value = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    else:
        value = rng.uniform(lo, hi)
    return int(round(value)) if knob.type == "int" else float(f"{value:.4g}")
