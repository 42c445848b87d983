"""The offline specialist: moves the typed knobs and switches on the named techniques
its surface declares, reacting to outcomes the way the paper's agents learned to.

* a budget overrun shrinks what costs time, a size violation what costs size (or
  switches on a technique that buys size), an oom what costs memory;
* a gate miss buys accuracy; a failure that beat the best (a faster variant that
  missed the gate) is answered on top of the failed program itself;
* a crash, divergence or invalid edit is not retried unchanged;
* otherwise it prefers the moves that improved before (mean delta per knob and
  direction, with a bonus for moves not tried yet, larger for untried moves that buy
  what the objective measures when the task declares it), and takes bigger or paired
  steps once its surface looks saturated;
* it merges a keep of another specialist that the best does not contain (a
  trial with two parents, three-way merged; a conflict is an invalid edit).

With lineage off it sees only the best program: every proposal is a fresh
random move from the best, with no memory of what failed — the control arm.
Deterministic for a given seed and the same sequence of views.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

from arl.agents.base import Proposal
from arl.agents.lineage import LineageView, TrialLine
from arl.agents.merge import MergeConflict, merge_programs
from arl.ledger.events import Label
from arl.ledger.programs import program_digest
from arl.ledger.projections import better
from arl.tasks.knobs import constants, format_value, parse_value, read, set_constant, write
from arl.tasks.manifest import Knob, Surface, Task, Technique

_REACTIONS: dict[str, str] = {
    # label → the resource the next move should make better
    Label.TRAIN_BUDGET_OVERRUN.value: "time",
    Label.EVAL_BUDGET_OVERRUN.value: "time",
    Label.SIZE_VIOLATION.value: "size",
    Label.OOM.value: "memory",
    Label.GATE_MISS.value: "accuracy",
}


#: A failure that beat the best is answered on its own program only when it missed by at
#: most this fraction of the check's limit: one move buys a little (flip averaging adds
#: ~0.01 of accuracy, 2 % of a 0.57 gate), not the 0.11 a halved training run loses.
RESCUE_SHORTFALL = 0.03


class Move:
    """One candidate change: knob values to set (with the direction of each) or a technique."""

    def __init__(self, *, values: dict[str, object], directions: dict[str, int] | None = None,
                 technique: Technique | None = None, why: str = "", key: tuple = ()) -> None:
        self.values = values
        self.directions = directions or {}
        self.technique = technique
        self.why = why
        self.key = key  # (knob, direction) or ("technique", name): what the outcome model learns on


class Tuner:
    backend = "tuner"

    def __init__(self, task: Task, surface: Surface, *, seed: int, lineage: bool = True,
                 program_of: Callable[[str], dict[str, bytes]] | None = None) -> None:
        self.task = task
        self.surface = surface
        self.name = surface.name
        self.lineage = lineage
        self.seed = seed
        self.rng = random.Random(f"{seed}/{surface.name}")
        self.program_of = program_of

    # -- the decision ----------------------------------------------------------------

    def propose(self, view: LineageView) -> Proposal | None:
        """A pure function of the seed and the view: a replay from the same views gets
        the same proposals, whatever else was asked in between."""
        if view.best is None:
            return None
        self.rng = random.Random(f"{self.seed}/{self.surface.name}/{view.position}/{view.trials_so_far}")
        if self.lineage and self.program_of is not None:
            merge = self._merge(view)
            if merge is not None:
                return merge
            rescue = self._rescue(view)
            if rescue is not None:
                return rescue
        program = view.best_program
        current = self._values(program)
        moves = self._candidates(current, view)
        if self.lineage:
            # Never propose a program the search has already run (the view lists them).
            moves = [m for m in moves if program_digest(self._apply(program, m)) not in view.known_programs]
        if not moves:
            return None
        move = self._choose(moves, view)
        child = self._apply(program, move)
        return Proposal(
            agent=self.name, surface=self.surface.name, hypothesis=move.why,
            expected_delta=self._expected(move, view), parents=(view.best.trial_id,),
            program=child, backend=self.backend,
        )

    def _values(self, program: dict[str, bytes]) -> dict[str, str]:
        values: dict[str, str] = {}
        for knob in self.surface.knobs:
            values[knob.name] = read(program.get(knob.file, b""), knob.name, knob.where)
        return values

    def _candidates(self, current: dict[str, str], view: LineageView,
                    program: dict[str, bytes] | None = None) -> list[Move]:
        """The moves from ``program`` (the best's by default) whose knob values are ``current``."""
        program = view.best_program if program is None else program
        saturated = self.lineage and view.saturated
        moves: list[Move] = []
        for knob in self.surface.knobs:
            value = parse_value(current[knob.name])
            seen = set()
            for direction in (+1, -1):
                new = _step(knob, value, direction, self.rng, big=saturated)
                if new is None or new == value or format_value(new) in seen:
                    continue
                seen.add(format_value(new))
                verb = "raise" if direction > 0 else "lower"
                moves.append(Move(values={knob.name: new}, directions={knob.name: _direction(value, new)},
                                  key=(knob.name, _direction(value, new)),
                                  why=f"{verb} {knob.name} {format_value(value)} → {format_value(new)}"))
        applied = {t.name for t in self.surface.techniques
                   if any(c.hypothesis.startswith(f"switch on {t.name}") for c in view.chain)}
        for technique in self.surface.techniques:
            # On now, or switched on earlier on the way to the best and moved on from since
            # (undoing a later keep would only walk back up the chain).
            if self._technique_on(technique, program) or technique.name in applied:
                continue
            moves.append(Move(values=dict(technique.set), technique=technique,
                              key=("technique", technique.name),
                              why=f"switch on {technique.name}"
                                  + (f": {technique.description}" if technique.description else "")))
        singles = [m for m in moves if m.technique is None]
        if saturated and len(singles) >= 2:
            # A flat surface: also try two knobs at once.
            a, b = self.rng.sample(singles, 2)
            if a.key[0] != b.key[0]:
                moves.append(Move(values={**a.values, **b.values},
                                  directions={**a.directions, **b.directions},
                                  key=("pair", a.key, b.key),
                                  why=f"{a.why} and {b.why} (surface looks saturated: bigger step)"))
        return moves

    def _choose(self, moves: list[Move], view: LineageView) -> Move:
        if not self.lineage:
            return self.rng.choice(moves)  # the control arm: no memory, no reactions
        mine = [t for t in view.mine if t.label is not None]
        # Never retry what failed or did not help. A discard that beat its own parent was
        # only overtaken by a concurrent keep: worth applying again on the new best.
        tried = {self._signature(t) for t in mine
                 if t.label != Label.KEEP.value and not self._helped(t)}
        stats = self._outcomes(mine)
        reaction = self._reaction(mine)
        scored: list[tuple[float, int, Move]] = []
        for i, move in enumerate(moves):
            if self._move_signature(move, view) in tried:
                continue  # never retry an outcome that already failed or did not help
            score = self._score(move, stats, view)
            if reaction is not None:
                score += 3.0 * self._answers(move, reaction)
            if move.technique is not None:
                score = min(score, self._walk_back(move, view, stats))
            scored.append((score + self.rng.random() * 0.25, i, move))
        if not scored:
            return self.rng.choice(moves)
        scored.sort(key=lambda s: (-s[0], s[1]))
        best = scored[0][2]
        if reaction is not None and self._answers(best, reaction) > 0:
            best.why += f" (last trial: {mine[-1].label} — {mine[-1].reason[:120]})"
        return best

    def _walk_back(self, move: Move, view: LineageView, stats: dict) -> float:
        """A technique that sets a knob back the way a helpful move of it came scores as
        badly as walking that move back (e.g. switching on a 64-byte context after
        32 beat 64)."""
        current = self._values(view.best_program)
        worst = math.inf  # no knob walked back: no cap
        for name, value in move.values.items():
            if name not in current:
                continue
            prior = _untried_prior(stats, name, _direction(parse_value(current[name]), value), view.noise_floor)
            if prior is not None:
                worst = min(worst, prior)
        return worst

    def _reaction(self, mine: list[TrialLine]) -> str | None:
        """The resource the last outcome says is short, if any."""
        return _REACTIONS.get(mine[-1].label or "") if mine else None

    def _answers(self, move: Move, short: str) -> float:
        """How well ``move`` answers a failure that says ``short`` is short. Paying for it
        with what the objective measures is no answer: the best is legal already, so
        raising epochs after a gate miss when the score is wallclock only gives back
        the time the search is after."""
        answer = self._serves(move, short)
        resource = self.task.objective.resource
        if resource is not None and resource != short:
            answer += min(0.0, self._serves(move, resource))
        return answer

    def _serves(self, move: Move, resource: str) -> float:
        """+1 per change that makes ``resource`` better, -1 per change that makes it worse.

        A knob that "costs" a resource makes it worse when raised; one that "buys"
        it makes it better when raised.
        """
        if move.technique is not None:
            return float(resource in move.technique.buys) - float(resource in move.technique.costs)
        total = 0.0
        for name, direction in move.directions.items():
            knob = self._knob(name)
            if knob is None:
                continue
            total += direction * (float(resource in knob.buys) - float(resource in knob.costs))
        return total

    def _gain(self, t: TrialLine) -> float | None:
        """What a legal trial's own change did (positive = better): its score against its
        parent's when known, else against the best it was compared with."""
        if t.label not in (Label.KEEP.value, Label.DISCARD.value):
            return None
        delta = t.delta_vs_parent if t.delta_vs_parent is not None else t.delta_vs_best
        if delta is None:
            return None
        return -delta if self.task.objective.direction == "min" else delta

    def _helped(self, t: TrialLine) -> bool:
        gain = self._gain(t)
        return gain is not None and gain > 0

    def _outcomes(self, mine: list[TrialLine]) -> dict[tuple, list[tuple[float, bool]]]:
        """Improvement (positive = better) of every past move, by what it moved, and
        whether the trial was legal (any failure counts -1 against the move)."""
        stats: dict[tuple, list[tuple[float, bool]]] = {}
        for t in mine:
            gain = self._gain(t)
            for key in self._keys_of(t):
                stats.setdefault(key, []).append((gain, True) if gain is not None else (-1.0, False))
        return stats

    def _score(self, move: Move, stats: dict[tuple, list[tuple[float, bool]]], view: LineageView) -> float:
        scale = max(view.noise_floor, 1e-9)
        history = stats.get(move.key)
        if not history:
            # Untried: worth a look, unless it walks back a move that measurably helped
            # (or forward from one that measurably hurt) — one knob, opposite direction.
            knob_move = len(move.key) == 2 and isinstance(move.key[1], int)
            prior = _untried_prior(stats, move.key[0], move.key[1], view.noise_floor) if knob_move else None
            return (0.5 if prior is None else prior) + self._promise(move)
        mean = sum(g for g, _ in history) / len(history)
        return max(-2.0, min(2.0, mean / scale)) / math.sqrt(len(history))

    def _promise(self, move: Move) -> float:
        """A prior for an untried move from what the objective measures: +0.5 when the
        move buys it (a speed-up when the score is wallclock), -0.5 when it costs it."""
        resource = self.task.objective.resource
        if resource is None:
            return 0.0
        return 0.5 * max(-1.0, min(1.0, self._serves(move, resource)))

    def _keys_of(self, t: TrialLine) -> list[tuple]:
        keys = []
        for name, (old, new) in t.changes.items():
            if self._knob(name) is None or old is None or new is None:
                continue
            keys.append((name, _direction(parse_value(old), parse_value(new))))
        for technique in self.surface.techniques:
            if technique.name in t.hypothesis:
                keys.append(("technique", technique.name))
        return keys

    def _signature(self, t: TrialLine) -> frozenset:
        return frozenset((name, new) for name, (_old, new) in t.changes.items()) or frozenset({t.hypothesis})

    def _move_signature(self, move: Move, view: LineageView) -> frozenset:
        if move.technique is not None and not move.values:
            return frozenset({move.why})
        return frozenset((name, format_value(value)) for name, value in move.values.items())

    def _expected(self, move: Move, view: LineageView) -> float:
        """Expected delta in the objective's units (negative = lower)."""
        sign = -1 if self.task.objective.direction == "min" else 1
        return sign * max(view.noise_floor, 1e-6)

    # -- making the program -------------------------------------------------------------

    def _knob(self, name: str) -> Knob | None:
        return next((k for k in self.surface.knobs if k.name == name), None)

    def _technique_on(self, technique: Technique, program: dict[str, bytes]) -> bool:
        if technique.edits:
            return all(e.replace in program.get(e.file, b"").decode(errors="replace")
                       for e in technique.edits)
        values = {}
        for knob in self.surface.knobs:
            values.update({k: v for k, v in constants(program.get(knob.file, b"")).items()})
        values.update(self._values(program))
        return all(k in values and parse_value(values[k]) == v for k, v in technique.set.items())

    def _apply(self, program: dict[str, bytes], move: Move) -> dict[str, bytes]:
        child = dict(program)
        for name, value in move.values.items():
            knob = self._knob(name)
            if knob is not None:
                child[knob.file] = write(child[knob.file], knob.name, knob.where, value)
            else:
                child[self.surface.files[0]] = set_constant(child[self.surface.files[0]], name, value)
        if move.technique is not None:
            for edit in move.technique.edits:
                text = child[edit.file].decode()
                if text.count(edit.search) == 1:
                    child[edit.file] = text.replace(edit.search, edit.replace).encode()
        return child

    def _rescue(self, view: LineageView) -> Proposal | None:
        """Answer a failure that beat the best on top of the failed program itself.

        A child of the best that scored better than it but failed for want of a
        resource — a speed-up that just missed the accuracy gate, a better model just
        over the size cap (by at most ``RESCUE_SHORTFALL`` of the limit) — is the most
        promising program in the search, and walking away from it wastes the find. The
        move of this surface that answers the shortage without costing what the
        objective measures (``flip_tta`` after a faster variant missed the gate) is
        tried on it, with the failed trial as parent. Each failed program gets each
        answer once (the search's known programs say which)."""
        best = view.best
        if best is None or best.score is None:
            return None
        for failed in view.best_children:  # failures first, newest first
            short = _REACTIONS.get(failed.label or "")
            if short is None or failed.score is None or not better(view.direction, failed.score, best.score):
                continue
            if failed.shortfall is None or failed.shortfall > RESCUE_SHORTFALL:
                continue  # too far off for one move to bring back (or by how much is unknown)
            try:
                program = self.program_of(failed.trial_id)
            except Exception:  # its program never reached the store: nothing to build on
                continue
            answers = []
            for move in self._candidates(self._values(program), view, program):
                answer = self._answers(move, short)
                if answer > 0 and program_digest(self._apply(program, move)) not in view.known_programs:
                    answers.append((-answer, self.rng.random(), move))
            if not answers:
                continue
            move = min(answers, key=lambda a: a[:2])[2]
            return Proposal(
                agent=self.name, surface=self.surface.name, backend=self.backend,
                hypothesis=(f"{move.why} on top of #{failed.seq} ({failed.hypothesis[:80]}), which beat the "
                            f"best but failed: {failed.label} — {failed.reason[:120]}"),
                expected_delta=self._expected(move, view), parents=(failed.trial_id,),
                program=self._apply(program, move),
            )
        return None

    def _merge(self, view: LineageView) -> Proposal | None:
        for keep in view.other_keeps:  # the view leaves out keeps already merged
            if keep.surface == self.surface.name:
                continue
            base_id = _common_ancestor(view, keep)
            if base_id is None:
                continue
            hypothesis = f"merge keep #{keep.seq} ({keep.agent}) into the best #{view.best.seq}"
            try:
                child = merge_programs(self.program_of(base_id), view.best_program, self.program_of(keep.trial_id))
            except MergeConflict as e:
                return Proposal(agent=self.name, surface=self.surface.name, hypothesis=hypothesis,
                                parents=(view.best.trial_id, keep.trial_id), backend=self.backend,
                                rejected=(Label.INVALID_EDIT, f"merge conflict: {e}"))
            if child == view.best_program or program_digest(child) in view.known_programs:
                continue
            return Proposal(agent=self.name, surface=self.surface.name, hypothesis=hypothesis,
                            parents=(view.best.trial_id, keep.trial_id), program=child,
                            expected_delta=self._expected(Move(values={}), view), backend=self.backend)
        return None


def _common_ancestor(view: LineageView, keep: TrialLine) -> str | None:
    """The best's chain member that ``keep`` descends from (its nearest one)."""
    chain = [t.trial_id for t in view.chain]
    # keep.parents[0] is usually on the chain (it branched off an earlier best).
    for parent in keep.parents:
        if parent in chain:
            return parent
    return None


def _untried_prior(stats: dict, knob: str, direction: int, noise_floor: float) -> float | None:
    """The score of an untried move of ``knob`` in ``direction`` judged by the legal outcomes
    of the opposite move: walking back one that helped scores low, one that hurt high.
    None when the opposite move has no legal outcome (or the change has no direction)."""
    legal = [g for g, ok in stats.get((knob, -direction), ()) if ok] if direction else []
    if not legal:
        return None
    scale = max(noise_floor, 1e-9)
    return 0.5 - 0.5 * max(-2.0, min(2.0, sum(legal) / len(legal) / scale))


def _direction(old: object, new: object) -> int:
    """+1 or -1 for a numeric (or boolean) change, 0 for a switch between named choices."""
    if isinstance(old, (int, float)) and isinstance(new, (int, float)) and old != new:
        return 1 if new > old else -1
    return 0


def _step(knob: Knob, value: object, direction: int, rng: random.Random, *, big: bool) -> object | None:
    if knob.type == "bool":
        return (not value) if isinstance(value, bool) else None
    if knob.type == "choice":
        if value in knob.choices and all(isinstance(c, (int, float)) for c in knob.choices):
            # Ordered choices (sizes): step to a neighbour, further when saturated.
            ordered = sorted(knob.choices)
            i = ordered.index(value) + direction * (rng.choice((1, 2)) if big else 1)
            return ordered[i] if 0 <= i < len(ordered) else None
        others = [c for c in knob.choices if c != value]
        return rng.choice(others) if others and direction > 0 else None
    if not isinstance(value, (int, float)) or knob.min is None or knob.max is None:
        return None
    if knob.log and value > 0:
        factor = rng.uniform(1.3, 2.2) if not big else rng.uniform(2.0, 4.0)
        new = value * factor if direction > 0 else value / factor
    else:
        span = knob.max - knob.min
        frac = rng.uniform(0.05, 0.25) if not big else rng.uniform(0.25, 0.5)
        new = value + direction * span * frac
    new = min(knob.max, max(knob.min, new))
    if knob.type == "int":
        new = int(round(new))
        if new == value:
            new = int(value) + direction
            if not knob.min <= new <= knob.max:
                return None
    else:
        new = float(f"{new:.4g}")
    return new
