"""Projections: the state consumers need, folded from the notification log.

One :class:`State` holds every view (trial table, lineage DAG, best-so-far per
search, counts by agent and surface, queue of unclaimed submissions). It is
folded event by event (:meth:`State.apply`), so it can be built from zero or
advanced from any position. A :class:`Projector` keeps it up to date against a
ledger and checkpoints it together with its log position in one write, so a
process killed at any point resumes from its last checkpoint and reaches the
same state as a rebuild from zero (compare :meth:`State.digests`).

A checkpoint carries the chain link of its position. Loading one checks that
link against the ledger's chain (a checkpoint of a rewritten log, or one put
at a position it was not computed at, is rebuilt from the log, with a
:class:`~arl.ledger.errors.LedgerWarning`); ``arl verify`` also compares each
checkpoint's views with a rebuild up to its position, which catches a forged
state whatever link it carries.
"""

from __future__ import annotations

import hashlib
import threading
import time
import warnings
from datetime import datetime

import msgspec

from arl.ledger import events as ev
from arl.ledger.errors import LedgerWarning
from arl.ledger.events import Label
from arl.ledger.store import Ledger, decode_states

#: The agent name of a search's baseline trials: the starting program, measured like any trial.
BASELINE_AGENT = "baseline"

#: Bump when State's layout changes: older checkpoints are then ignored and rebuilt.
PROJECTION_VERSION = 6  # 3: TrialRow.shortfalls; 4: baselines never charged, SearchRow.measuring; 5: State.link;
# 6: TrialRow.seed_scores, SearchRow.floor_source


class TrialRow(msgspec.Struct, kw_only=True, gc=False):
    trial_id: str
    search_id: str
    seq: int
    agent: str
    surface: str
    parents: tuple[str, ...] = ()
    hypothesis: str = ""
    expected_delta: float | None = None
    backend: str = ""
    #: proposed → rejected | submitted → claimed → finished → evaluated → labeled
    status: str = "proposed"
    program_digest: str | None = None
    runner: str | None = None
    attempts: int = 0
    claimed_at: datetime | None = None
    lease_s: float = 0.0
    label: Label | None = None
    score: float | None = None
    reason: str = ""
    delta_vs_best: float | None = None
    delta_vs_parent: float | None = None
    #: For each failed check with a value and a limit, by the label it fails as: how far
    #: it missed, as a fraction of the limit (0.02: 2 % short of an accuracy gate).
    shortfalls: dict[str, float] = {}
    #: Per-seed scores its label stood on (from the label's evidence; empty for older ledgers).
    seed_scores: dict[int, float] = {}
    proposed_at: datetime | None = None
    labeled_at: datetime | None = None
    version: int = 0  # last stream version seen

    @property
    def is_baseline(self) -> bool:
        """A measurement of the search's starting program (trial 0, or a re-measure of it)."""
        return self.agent == BASELINE_AGENT and not self.parents


class SearchRow(msgspec.Struct, kw_only=True, gc=False):
    search_id: str
    name: str
    task: str
    direction: str
    noise_floor: float = 0.0
    #: "manifest", or "measured" once a baseline on several seeds set the floor.
    floor_source: str = "manifest"
    #: One line when the measured floor contradicts the manifest's, else "".
    floor_note: str = ""
    kind: str = "search"
    started_at: datetime | None = None
    stopped_at: datetime | None = None
    stop_reason: str | None = None
    baseline_trial: str | None = None
    baseline_score: float | None = None
    #: The latest measurement of the starting program, whatever became of it.
    measuring: str | None = None
    best_trial: str | None = None
    best_score: float | None = None
    proposed: int = 0
    labeled: int = 0
    charged: int = 0


class State(msgspec.Struct, kw_only=True):
    position: int = 0
    #: The chain link (hex) of the event at ``position``, set when the state is checkpointed.
    link: str = ""
    searches: dict[str, SearchRow] = {}
    trials: dict[str, TrialRow] = {}
    children: dict[str, list[str]] = {}
    #: "<search id>/<agent>" → label → count (and the same keyed by surface)
    by_agent: dict[str, dict[str, int]] = {}
    by_surface: dict[str, dict[str, int]] = {}
    #: submitted, not yet claimed (or re-queued after a lost lease) → notification id
    queue: dict[str, int] = {}

    # -- folding -------------------------------------------------------------------

    def apply(self, notification_id: int, event: ev.Event) -> None:
        handler = _HANDLERS.get(type(event))
        if handler is not None:
            handler(self, event, notification_id)
        row = self.trials.get(event.originator_id)
        if row is not None:
            row.version = event.originator_version
        self.position = notification_id

    def apply_all(self, batch: list[tuple[int, ev.Event]]) -> None:
        for nid, event in batch:
            self.apply(nid, event)

    # -- questions consumers ask ----------------------------------------------------

    def lineage(self, trial: str) -> list[str]:
        """Root → trial chain, following first parents."""
        chain = []
        seen = set()
        current: str | None = trial
        while current is not None and current not in seen and current in self.trials:
            seen.add(current)
            chain.append(current)
            parents = self.trials[current].parents
            current = parents[0] if parents else None
        return chain[::-1]

    def trials_of(self, search: str) -> list[TrialRow]:
        return sorted(
            (t for t in self.trials.values() if t.search_id == search), key=lambda t: t.seq
        )

    def next_in_queue(self) -> str | None:
        return next(iter(self.queue), None)

    def baseline_of(self, search: str) -> TrialRow | None:
        """The search's latest measurement of its starting program (None before the first)."""
        row = self.searches.get(search)
        return self.trials.get(row.measuring) if row is not None and row.measuring else None

    def baseline_failed(self, search: str) -> TrialRow | None:
        """The latest baseline trial if it was labelled with a failure (the search cannot go on
        until it is measured again), else None."""
        base = self.baseline_of(search)
        return base if base is not None and base.label is not None and base.label is not Label.BASELINE else None

    # -- comparison ---------------------------------------------------------------------

    def digests(self) -> dict[str, str]:
        """A sha256 per view; equal digests mean equal state."""
        parts = {
            "trials": self.trials,
            "lineage": self.children,
            "searches": self.searches,
            "counts": [self.by_agent, self.by_surface],
            "queue": self.queue,
        }
        return {
            name: hashlib.sha256(_encoder.encode(value)).hexdigest()
            for name, value in parts.items()
        }

    def digest(self) -> str:
        return hashlib.sha256("".join(self.digests().values()).encode()).hexdigest()

    def to_bytes(self) -> bytes:
        return _encoder.encode(self)

    @classmethod
    def from_bytes(cls, data: bytes) -> State:
        return _state_decoder.decode(data)


_encoder = msgspec.msgpack.Encoder()
_state_decoder = msgspec.msgpack.Decoder(State)


def better(direction: str, score: float, than: float | None) -> bool:
    if than is None:
        return True
    return score < than if direction == "min" else score > than


def relative_gain(direction: str, score: float | None, reference: float | None) -> float | None:
    """How much better ``score`` is than ``reference``, as a fraction of it (positive = better);
    None without both, or against a reference of 0."""
    if score is None or not reference:
        return None
    change = (score - reference) / abs(reference)
    return -change if direction == "min" else change


def _on_search_started(s: State, e: ev.SearchStarted, _nid: int) -> None:
    s.searches[e.originator_id] = SearchRow(
        search_id=e.originator_id,
        name=e.name,
        task=e.task,
        direction=e.direction,
        noise_floor=e.noise_floor,
        kind=e.kind,
        started_at=e.at,
    )


def _on_search_stopped(s: State, e: ev.SearchStopped, _nid: int) -> None:
    row = s.searches.get(e.originator_id)
    if row is not None:
        row.stopped_at = e.at
        row.stop_reason = e.reason


def _on_proposed(s: State, e: ev.TrialProposed, _nid: int) -> None:
    s.trials[e.originator_id] = TrialRow(
        trial_id=e.originator_id,
        search_id=e.search_id,
        seq=e.seq,
        agent=e.agent,
        surface=e.surface,
        parents=e.parents,
        hypothesis=e.hypothesis,
        expected_delta=e.expected_delta,
        backend=e.backend,
        proposed_at=e.at,
    )
    for parent in e.parents:
        s.children.setdefault(parent, []).append(e.originator_id)
    search = s.searches.get(e.search_id)
    if search is not None:
        search.proposed += 1
        if s.trials[e.originator_id].is_baseline:
            search.measuring = e.originator_id


def _on_rejected(s: State, e: ev.EditRejected, _nid: int) -> None:
    row = s.trials[e.originator_id]
    row.status = "rejected"
    row.reason = e.reason


def _on_submitted(s: State, e: ev.TrialSubmitted, nid: int) -> None:
    row = s.trials[e.originator_id]
    row.status = "submitted"
    row.program_digest = e.program_digest
    s.queue[e.originator_id] = nid


def _on_claimed(s: State, e: ev.TrialClaimed, _nid: int) -> None:
    row = s.trials[e.originator_id]
    row.status = "claimed"
    row.runner = e.runner
    row.attempts = e.attempt
    row.claimed_at = e.at
    row.lease_s = e.lease_s
    s.queue.pop(e.originator_id, None)


def _on_lease_expired(s: State, e: ev.LeaseExpired, nid: int) -> None:
    row = s.trials[e.originator_id]
    row.status = "submitted"
    row.runner = None
    s.queue[e.originator_id] = nid


def _on_finished(s: State, e: ev.RunFinished, _nid: int) -> None:
    if e.refused is None:  # a refused late result changes nothing
        s.trials[e.originator_id].status = "finished"


def _on_evaluated(s: State, e: ev.TrialEvaluated, _nid: int) -> None:
    row = s.trials[e.originator_id]
    row.status = "evaluated"
    row.score = e.score
    row.shortfalls = {}
    for c in e.checks:
        if not c.passed and c.value is not None and c.limit:
            # Two failed checks with one label (e.g. two size caps): the worse one counts.
            miss = abs(c.value - c.limit) / abs(c.limit)
            row.shortfalls[c.fails_as.value] = max(miss, row.shortfalls.get(c.fails_as.value, 0.0))


def _on_labeled(s: State, e: ev.TrialLabeled, _nid: int) -> None:
    row = s.trials[e.originator_id]
    row.status = "labeled"
    row.label = e.label
    row.score = e.score
    row.reason = e.reason
    row.delta_vs_best = e.delta_vs_best
    row.delta_vs_parent = e.delta_vs_parent
    row.seed_scores = dict(e.evidence.seeds) if e.evidence is not None else {}
    row.labeled_at = e.at
    s.queue.pop(e.originator_id, None)
    label = e.label.value
    for table, key in ((s.by_agent, row.agent), (s.by_surface, row.surface)):
        counts = table.setdefault(f"{row.search_id}/{key}", {})
        counts[label] = counts.get(label, 0) + 1
    search = s.searches.get(row.search_id)
    if search is None:
        return
    search.labeled += 1
    if e.label.charged and not row.is_baseline:  # the starting program is never charged, however it did
        search.charged += 1
    if e.score is None:
        return
    if e.label is Label.BASELINE and search.baseline_trial is None:
        search.baseline_trial = row.trial_id
        search.baseline_score = e.score
    if e.label is Label.BASELINE and e.evidence is not None and e.evidence.floor_source == "measured":
        search.noise_floor = e.evidence.noise_floor
        search.floor_source = "measured"
        search.floor_note = e.evidence.note
    if e.label in (Label.BASELINE, Label.KEEP) and better(
        search.direction, e.score, search.best_score
    ):
        search.best_trial = row.trial_id
        search.best_score = e.score


_HANDLERS = {
    ev.SearchStarted: _on_search_started,
    ev.SearchStopped: _on_search_stopped,
    ev.TrialProposed: _on_proposed,
    ev.EditRejected: _on_rejected,
    ev.TrialSubmitted: _on_submitted,
    ev.TrialClaimed: _on_claimed,
    ev.LeaseExpired: _on_lease_expired,
    ev.RunFinished: _on_finished,
    ev.TrialEvaluated: _on_evaluated,
    ev.TrialLabeled: _on_labeled,
}


def rebuild(ledger: Ledger, *, page: int = 50_000) -> State:
    """Fold the whole log from the first event."""
    state = State()
    _advance(ledger, state, page)
    return state


def rebuild_to(ledger: Ledger, state: State, position: int, *, page: int = 50_000) -> State:
    """Advance ``state`` through the event at ``position`` and no further."""
    while state.position < position:
        rows = [r for r in ledger.read_states(state.position, page) if r[0] <= position]
        if not rows:
            break
        events = decode_states([r[1] for r in rows])
        for row, event in zip(rows, events, strict=True):
            state.apply(row[0], event)
    return state


def _advance(ledger: Ledger, state: State, page: int, until: float | None = None) -> int:
    """Apply every event after ``state.position``; returns how many were applied."""
    applied = 0
    while True:
        rows = ledger.read_states(state.position, page)
        if not rows:
            return applied
        events = decode_states([r[1] for r in rows])
        apply = state.apply
        for row, event in zip(rows, events, strict=True):
            apply(row[0], event)
        applied += len(rows)
        if until is not None and time.monotonic() >= until:
            return applied


def checkpoint_problem(ledger: Ledger, name: str, position: int, digest: str,
                       data: bytes) -> tuple[str | None, State | None]:
    """What is wrong with a stored checkpoint, short of a rebuild: (problem or None, its state).

    A checkpoint of another layout version is nobody's concern (never loaded): (None, None).
    """
    if not name.endswith(f"/v{PROJECTION_VERSION}"):
        return None, None
    if hashlib.sha256(data).hexdigest() != digest:
        return f"its bytes at #{position} do not match its digest (damaged)", None
    try:
        state = State.from_bytes(data)
    except msgspec.DecodeError:
        return f"its state at #{position} cannot be decoded (damaged)", None
    if state.position != position:
        return f"it is stored at #{position} but holds the state at #{state.position}", None
    link = ledger.chain_link(position)
    if link is None:
        return f"it is at #{position}, and the log has no event #{position}", None
    if state.link != link.hex():
        return (f"it carries the link {state.link[:16] or '(none)'}… for #{position}, and the chain "
                f"there is {link.hex()[:16]}…: it was not computed from this log"), None
    return None, state


class Projector:
    """Keeps a :class:`State` current against a ledger, with durable checkpoints.

    The checkpoint (state + position + its chain link, one row, one transaction)
    is written at most every ``checkpoint_s`` seconds, so a restart re-applies at
    most the events of that long; call :meth:`checkpoint` to write one now. On a
    ledger opened read-only no checkpoint is written.
    """

    def __init__(self, ledger: Ledger, *, name: str = "state", checkpoint_s: float = 2.0) -> None:
        self.ledger = ledger
        self.name = f"{name}/v{PROJECTION_VERSION}"
        self.checkpoint_s = checkpoint_s
        self.state = self._load()
        self._checkpointed = time.monotonic()

    def _load(self) -> State:
        # Read-only, this projector writes no checkpoint of its own: it starts from the
        # furthest one any writer (a search driver, a worker) left, if its link holds.
        names = [self.name]
        if self.ledger.read_only:
            names = [n for n, _ in self.ledger.checkpoint_positions() if n.endswith(f"/v{PROJECTION_VERSION}")]
        for name in names:
            stored = self.ledger.load_checkpoint(name)
            if stored is None:
                continue
            position, digest, data = stored
            problem, state = checkpoint_problem(self.ledger, name, position, digest, data)
            if state is not None:
                return state
            warnings.warn(f"projection checkpoint {name!r} not used: {problem}; "
                          "rebuilding from the log (`arl verify` checks every checkpoint)",
                          LedgerWarning, stacklevel=3)
        return State()

    def catch_up(self, *, page: int = 50_000) -> State:
        """Apply everything recorded so far; checkpoint at most every ``checkpoint_s``."""
        while _advance(self.ledger, self.state, page, until=time.monotonic() + self.checkpoint_s):
            if time.monotonic() - self._checkpointed >= self.checkpoint_s:
                self.checkpoint()
        return self.state

    def checkpoint(self) -> None:
        self._checkpointed = time.monotonic()
        if self.ledger.read_only:
            return
        link = self.ledger.chain_link(self.state.position)
        if link is None:  # the log lost the event this state stands on: nothing sound to store
            return
        self.state.link = link.hex()
        data = self.state.to_bytes()
        self.ledger.save_checkpoint(
            self.name, self.state.position, hashlib.sha256(data).hexdigest(), data
        )

    def run(self, stop: threading.Event, *, timeout: float = 0.5) -> None:
        """Follow the log until ``stop`` is set."""
        while not stop.is_set():
            self.catch_up()
            self.ledger.wait(self.state.position, timeout)
