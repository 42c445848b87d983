"""The event catalogue: everything that can happen in a search, as frozen structs.

One schema per event, used by the writer (the store's mapper), the reader
(projections, verification) and the SQL views. Evolve only by adding fields
with defaults. The class names are part of the stored schema: each event is
stored under the topic ``ledger.events:ClassName`` (:func:`topic`), a fixed
schema name that no longer follows the module the class lives in, so moving
this catalogue (it is ``arl.ledger.events`` since arl became one package) never
strands a ledger written before.
"""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec
from eventsourcing.utils import register_topic

#: Bumped when the stored layout changes incompatibly; a ledger written with a
#: higher number is refused by this version of arl.
SCHEMA_VERSION = 1


class Label(enum.StrEnum):
    """The outcome class of a trial (see DESIGN.md, "Labels")."""

    BASELINE = "baseline"
    KEEP = "keep"
    DISCARD = "discard"
    CRASH = "crash"
    OOM = "oom"
    DIVERGED = "diverged"
    TRAIN_BUDGET_OVERRUN = "train_budget_overrun"
    EVAL_BUDGET_OVERRUN = "eval_budget_overrun"
    SIZE_VIOLATION = "size_violation"
    GATE_MISS = "gate_miss"
    INVALID_EDIT = "invalid_edit"
    OUT_OF_SURFACE = "out_of_surface"
    ILLEGAL_EDIT = "illegal_edit"
    DUPLICATE = "duplicate"
    INFRA_ERROR = "infra_error"

    @property
    def charged(self) -> bool:
        """Whether a trial with this label uses up the search's trial budget."""
        return self not in _FREE_LABELS

    @property
    def legal(self) -> bool:
        """Whether the trial ran and passed every legality check."""
        return self in (Label.BASELINE, Label.KEEP, Label.DISCARD)


_FREE_LABELS = frozenset({Label.BASELINE, Label.DUPLICATE, Label.INFRA_ERROR})


def now() -> datetime:
    return datetime.now(UTC)


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag=True, gc=False):
    """Base of every ledger event: which stream, where in it, and when."""

    #: Stream id: a UUID in canonical text form (searches: uuid4; trials: see trial_id).
    originator_id: str
    originator_version: int
    at: datetime = msgspec.field(default_factory=now)


# --- value types carried inside events --------------------------------------


class Budget(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Limits a runner enforces from outside the recipe (None: no limit)."""

    train_s: float | None = None
    eval_s: float | None = None
    wallclock_s: float | None = None
    memory_mb: int | None = None
    threads: int = 1
    #: Bytes of training text one run is given (None: the whole training folder).
    train_tokens: int | None = None


class Check(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One legality check of an evaluation: what was measured against what limit."""

    name: str
    passed: bool
    value: float | None = None
    limit: float | None = None
    detail: str = ""
    #: The label a failure of this check gives the trial (e.g. size_violation).
    fails_as: Label = Label.GATE_MISS


# --- the search stream -------------------------------------------------------


class SearchStarted(Event, frozen=True, kw_only=True):
    name: str
    task: str
    task_digest: str
    direction: Literal["min", "max"]
    noise_floor: float = 0.0
    config: dict[str, Any] = {}
    arl_version: str = ""
    host: str = ""
    #: "search" for an ordinary one; "replay", "fork" or "import" otherwise.
    kind: str = "search"
    origin_search: str | None = None
    origin_trial: str | None = None


class SearchStopped(Event, frozen=True, kw_only=True):
    reason: str
    summary: dict[str, Any] = {}


class SearchResumed(Event, frozen=True, kw_only=True):
    """A stopped search continued (``arl run --resume``), with what the resume changed of its
    configuration (trial budget, workers, token budget), old and new."""

    changes: dict[str, Any] = {}
    arl_version: str = ""
    host: str = ""


# --- the trial stream ----------------------------------------------------------


class TrialProposed(Event, frozen=True, kw_only=True):
    search_id: str
    seq: int
    agent: str
    surface: str
    parents: tuple[str, ...] = ()
    hypothesis: str = ""
    expected_delta: float | None = None
    backend: str = ""
    edit_digest: str | None = None
    agent_call_digest: str | None = None
    #: For imported trials: the original id, status and raw row.
    source: dict[str, Any] | None = None
    #: For imported trials whose text was clipped in ``source``/``hypothesis``: a blob
    #: holding the whole record as the source had it (JSON).
    source_digest: str | None = None
    #: The log position of the state the proposer's view was built from (for replay).
    seen_position: int | None = None


class EditRejected(Event, frozen=True, kw_only=True):
    search_id: str
    check: str
    reason: str


class TrialSubmitted(Event, frozen=True, kw_only=True):
    search_id: str
    program_digest: str
    budget: Budget = Budget()
    seeds: tuple[int, ...] = ()


class TrialClaimed(Event, frozen=True, kw_only=True):
    search_id: str
    runner: str
    host: str = ""
    lease_s: float = 60.0
    attempt: int = 1


class RunFinished(Event, frozen=True, kw_only=True):
    search_id: str
    runner: str
    exit_code: int | None = None
    signal: int | None = None
    wall_s: float = 0.0
    cpu_s: float = 0.0
    peak_rss_mb: float = 0.0
    timed_out: str | None = None
    stdout_tail: str = ""
    stderr_tail: str = ""
    artifacts: dict[str, str] = {}
    log_digest: str | None = None
    sandbox: str = "none"
    #: Unix time the first recipe process was spawned.
    started_at: float | None = None
    #: Set when the result came from a runner whose lease had already expired: it
    #: is kept on the record but not used (no evaluation, no label follow it).
    refused: str | None = None


class TrialEvaluated(Event, frozen=True, kw_only=True):
    search_id: str
    evaluator: str
    evaluator_version: str = ""
    score: float | None = None
    #: Non-finite values (nan, inf) are stored as null: JSON has no spelling for them.
    metrics: dict[str, float | None] = {}
    checks: tuple[Check, ...] = ()
    seeds: tuple[int, ...] = ()
    #: sha256 of the task's data (training and held-out files) the evaluation used.
    data_digest: str | None = None
    #: False: the score was read from the recipe's own log (its claim, not measured by the
    #: evaluator); True: computed by the evaluator; None: recorded before arl told them apart.
    verified: bool | None = None


class Evidence(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What a keep, a discard or a baseline stands on, as measured when it was decided.

    ``gain`` and ``interval`` are in the objective's better direction (positive: the
    candidate is better). ``test`` is "welch_t" (both sides measured on two seeds or
    more), "bootstrap" (a 95 % interval of the mean difference, resampling the side
    with several seeds) or "none" (one measurement each: there is nothing to test).
    The label follows ``rule``; the test is the evidence beside it.
    """

    #: The rule that decided, in words ("gain 0.05 > noise floor 0.03: kept without re-runs").
    rule: str
    #: The candidate's score on each seed the decision used.
    seeds: dict[int, float] = {}
    #: What it was compared with: the best at label time, its score and per-seed scores.
    best_trial: str | None = None
    best: float | None = None
    best_seeds: dict[int, float] = {}
    gain: float | None = None
    #: A decision that went to re-runs: the gain on the first seeds, which sent it there
    #: (``gain`` is then the one over every seed). None where nothing was re-run.
    screen_gain: float | None = None
    #: The floor the search judged by, and where it came from ("manifest" or "measured").
    noise_floor: float = 0.0
    floor_source: str = "manifest"
    confirmed: bool = False
    test: str = "none"
    statistic: float | None = None
    p_value: float | None = None
    interval: tuple[float, float] | None = None
    #: A baseline measured on several seeds: the spread it found and the manifest's floor.
    measured_floor: float | None = None
    declared_floor: float | None = None
    #: One line when the measurement contradicts the manifest's floor, else "".
    note: str = ""


class TrialLabeled(Event, frozen=True, kw_only=True):
    search_id: str
    label: Label
    score: float | None = None
    improvement: bool = False
    delta_vs_parent: float | None = None
    delta_vs_best: float | None = None
    reason: str = ""
    #: Keeps, discards and baselines of a legal score (None for older ledgers and failures).
    evidence: Evidence | None = None


class LeaseExpired(Event, frozen=True, kw_only=True):
    search_id: str
    runner: str
    attempt: int = 1
    reason: str = ""


EVENT_TYPES: tuple[type[Event], ...] = (
    SearchStarted,
    SearchStopped,
    SearchResumed,
    TrialProposed,
    EditRejected,
    TrialSubmitted,
    TrialClaimed,
    RunFinished,
    TrialEvaluated,
    TrialLabeled,
    LeaseExpired,
)

#: The events of a search's own stream (every other event belongs to a trial's stream).
SEARCH_EVENTS: tuple[type[Event], ...] = (SearchStarted, SearchStopped, SearchResumed)

AnyEvent = (
    SearchStarted
    | SearchStopped
    | SearchResumed
    | TrialProposed
    | EditRejected
    | TrialSubmitted
    | TrialClaimed
    | RunFinished
    | TrialEvaluated
    | TrialLabeled
    | LeaseExpired
)

#: What every stored topic starts with: the catalogue's schema name (its module path when the
#: first ledgers were written). Topics are never derived from where the classes live now.
TOPIC_PREFIX = "ledger.events:"


def topic(cls: type[Event]) -> str:
    """The topic an event class is stored under."""
    return TOPIC_PREFIX + cls.__name__


for _cls in EVENT_TYPES:  # eventsourcing resolves a stored topic through this registry first
    register_topic(topic(_cls), _cls)


class BlobRefs(msgspec.Struct, gc=False):
    """Every event field that names a blob, across the catalogue.

    A field added to an event that holds a blob digest must be added here too:
    verification decodes each stored event through this struct (fields an
    event lacks stay empty) and checks that every digest resolves.
    """

    edit_digest: str | None = None
    agent_call_digest: str | None = None
    program_digest: str | None = None
    log_digest: str | None = None
    source_digest: str | None = None
    artifacts: dict[str, str] = {}

    def digests(self) -> list[str]:
        single = (self.edit_digest, self.agent_call_digest, self.program_digest, self.log_digest,
                  self.source_digest)
        return [d for d in single if d] + list(self.artifacts.values())


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(AnyEvent)


def encode(event: Event) -> bytes:
    return _encoder.encode(event)


def decode(data: bytes) -> Event:
    """Decode one stored event; the tag inside the payload picks the class."""
    return _decoder.decode(data)


def new_search_id() -> str:
    return str(uuid.uuid4())


def trial_id(search_id: str, seq: int) -> str:
    """The id of a search's seq-th trial: derived, so a replay gets the same ids."""
    return str(uuid.uuid5(uuid.UUID(search_id), f"trial/{seq}"))
