"""The lineage view: what a specialist is told about the search before it proposes.

Rendered from projections (``ledger.projections.State``) and programs in the
blob store — never from parsing files. It is bounded by choosing what matters
(the best and how it was reached, what was tried on top of it, this
specialist's own recent outcomes with reasons, other specialists' recent
failures), not by cutting text at a byte count. With lineage off (the control
arm) a specialist sees only the current best program and its score.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from arl.tasks.knobs import constant_changes
from arl.ledger.events import Label
from arl.ledger.projections import State, TrialRow

#: How many items of each list a view keeps.
RECENT = 8
#: Consecutive non-improving trials of a specialist after which it is told it is saturated.
SATURATION = 5

class TrialLine(msgspec.Struct, kw_only=True):
    seq: int
    trial_id: str
    agent: str
    surface: str
    hypothesis: str
    label: str | None
    score: float | None
    delta_vs_best: float | None
    reason: str
    parents: tuple[str, ...] = ()
    #: Score minus the first parent's score: the effect of this trial's own change (the
    #: best may have moved while it ran, so Δbest alone under-credits pipelined trials).
    delta_vs_parent: float | None = None
    #: Top-level constants the trial changed vs its first parent: NAME → (old, new) source text.
    changes: dict[str, tuple[str | None, str | None]] = {}
    #: For a failure: how far the check that labelled it missed, as a fraction of its limit.
    shortfall: float | None = None

    @classmethod
    def of(cls, row: TrialRow, changes: dict[str, tuple[str | None, str | None]] | None = None) -> TrialLine:
        """The line of a projected trial row."""
        return cls(
            seq=row.seq, trial_id=row.trial_id, agent=row.agent, surface=row.surface,
            hypothesis=row.hypothesis, label=row.label.value if row.label else None,
            score=row.score, delta_vs_best=row.delta_vs_best, reason=row.reason,
            parents=row.parents, changes=changes or {}, delta_vs_parent=row.delta_vs_parent,
            shortfall=row.shortfalls.get(row.label.value) if row.label else None,
        )


class LineageView(msgspec.Struct, kw_only=True):
    search_id: str
    task: str
    metric: str
    direction: str
    noise_floor: float
    specialist: str
    surface: str
    lineage: bool
    baseline_score: float | None = None
    best: TrialLine | None = None
    best_program: dict[str, bytes] = {}
    chain: list[TrialLine] = []
    best_children: list[TrialLine] = []
    mine: list[TrialLine] = []
    others_failures: list[TrialLine] = []
    #: Recent keeps by other specialists that do not descend from the best (merge candidates).
    other_keeps: list[TrialLine] = []
    flat_streak: int = 0
    trials_so_far: int = 0
    #: The log position the view was built at (recorded on the proposal, for replay).
    position: int = 0
    #: Digests of every program the search has submitted (to avoid proposing duplicates).
    known_programs: frozenset[str] = frozenset()
    #: How the search's starting program was reached, when the search is a fork.
    origin: list[TrialLine] = []

    @property
    def saturated(self) -> bool:
        return self.flat_streak >= SATURATION

    def render(self) -> str:
        """Plain text for a model's prompt (and for people)."""
        better = "lower" if self.direction == "min" else "higher"
        out = [f"# Search on task {self.task}: {self.metric}, {better} is better"]
        if self.best is None:
            out.append("No legal result yet.")
            return "\n".join(out)
        base = f" (baseline {_num(self.baseline_score)})" if self.baseline_score is not None else ""
        out.append(f"Current best: trial {self.best.seq} by {self.best.agent}, "
                   f"{self.metric} = {_num(self.best.score)}{base}.")
        if not self.lineage:
            return "\n".join(out)
        if self.origin:
            out.append("\n## This search forks another; how its starting program was reached")
            out += [_line(t, self.metric, with_reason=False) for t in self.origin]
        if self.chain:
            out.append("\n## How the best was reached (root → best)")
            out += [_line(t, self.metric, with_reason=False) for t in self.chain]
        if self.best_children:
            out.append("\n## Tried on top of the best")
            out += [_line(t, self.metric) for t in self.best_children]
        if self.mine:
            out.append(f"\n## Your recent trials ({self.specialist}, surface {self.surface})")
            out += [_line(t, self.metric) for t in self.mine]
        if self.others_failures:
            out.append("\n## Recent failures of other specialists")
            out += [_line(t, self.metric) for t in self.others_failures]
        if self.saturated:
            out.append(f"\n{self.flat_streak} of your trials in a row did not improve the best: "
                       "your surface looks saturated here; try a different kind of change.")
        return "\n".join(out)


def _num(x: float | None) -> str:
    return "—" if x is None else f"{x:.6g}"


def _line(t: TrialLine, metric: str, *, with_reason: bool = True) -> str:
    delta = f", Δparent {t.delta_vs_parent:+.4g}" if t.delta_vs_parent is not None else ""
    delta += f", Δbest {t.delta_vs_best:+.4g}" if t.delta_vs_best is not None else ""
    changes = "; ".join(f"{k} {old} → {new}" for k, (old, new) in t.changes.items())
    text = f"- #{t.seq} [{t.label or 'running'}] {t.agent}: {t.hypothesis or changes or '(no hypothesis)'}"
    text += f" — {metric} {_num(t.score)}{delta}"
    if with_reason and t.reason and t.label not in (Label.KEEP, Label.BASELINE, None):
        text += f" — {t.reason}"
    return text


def build_view(
    state: State,
    search_id: str,
    *,
    specialist: str,
    surface: str,
    metric: str,
    program_of: Callable[[str], dict[str, bytes]],
    lineage: bool = True,
) -> LineageView:
    """Assemble a specialist's view. ``program_of(trial_id)`` loads a trial's program."""
    search = state.searches[search_id]
    rows = state.trials_of(search_id)
    view = LineageView(
        search_id=search_id, task=search.task, metric=metric, direction=search.direction,
        noise_floor=search.noise_floor, specialist=specialist, surface=surface, lineage=lineage,
        baseline_score=search.baseline_score, trials_so_far=len(rows), position=state.position,
        known_programs=frozenset(r.program_digest for r in rows if r.program_digest),
    )
    best_id = search.best_trial
    if best_id is None:
        # The baseline is still being measured (the first proposals run beside it, under
        # the same load as every later trial): its program is where everyone starts.
        base = next((r for r in rows if r.seq == 0 and r.program_digest and r.label is None), None)
        if base is None:
            return view
        best_id = base.trial_id

    def line(row: TrialRow, with_changes: bool = True) -> TrialLine:
        changes = {}
        if with_changes and row.parents and row.program_digest:
            try:
                changes = constant_changes(program_of(row.parents[0]), program_of(row.trial_id))
            except Exception:  # a program that never made it to the store has no changes
                changes = {}
        return TrialLine.of(row, changes)

    best = state.trials[best_id]
    view.best = line(best, with_changes=False)
    view.best_program = program_of(best.trial_id)
    if not lineage:
        return view

    chain = [state.trials[t] for t in state.lineage(best.trial_id)]
    view.chain = [line(r, with_changes=False) for r in chain[-RECENT:]]
    children = [state.trials[c] for c in state.children.get(best.trial_id, [])]
    # Failures first (they carry the lesson), then the newest.
    children.sort(key=lambda r: (r.label is not None and r.label.legal, -r.seq))
    view.best_children = [line(r) for r in children[:RECENT]]
    mine = [r for r in rows if r.agent == specialist and r.seq > 0]
    view.mine = [line(r) for r in mine[-RECENT:]]
    streak = 0
    for r in reversed([r for r in mine if r.label is not None]):
        if r.label is Label.KEEP:
            break
        streak += 1
    view.flat_streak = streak
    failures = [r for r in rows if r.agent != specialist and r.label is not None
                and not r.label.legal and r.label not in (Label.DUPLICATE,)]
    view.others_failures = [line(r, with_changes=False) for r in failures[-RECENT // 2 - 2:]]
    ancestors = set(state.lineage(best.trial_id))
    merged = {p for r in rows for p in r.parents[1:]}
    keeps = [r for r in rows if r.label is Label.KEEP and r.trial_id not in ancestors
             and r.trial_id not in merged and r.agent != best.agent]
    view.other_keeps = [line(r, with_changes=False) for r in keeps[-3:]]
    return view
