"""OpenLineage run events from the ledger, in a batch or live (``arl export openlineage``, ``arl lineage follow``).

Each trial is one OpenLineage run, and each search the parent run of its trials:

* a trial **starts** when a worker claims it; a trial the record knows no claim of (an
  import, an edit rejected before it ran, a duplicate) starts at the earliest time the
  record supports — the run's start, else the proposal — and its ``arl_proposal`` facet
  says which (``startedFrom``);
* it **ends** at its label: ``COMPLETE`` for baseline, keep and discard; ``ABORT`` for
  infra_error and duplicate (nothing of the recipe was judged); ``FAIL`` for every other
  label (crash, oom, budget overruns, violations, gate misses, rejected edits), with the
  reason as an ErrorMessageRunFacet;
* a claim after an expired lease is a ``RUNNING`` event of the same run.

Run ids are the trial and search ids themselves (UUIDs derived from the search id and the
trial's number), so a re-export, or a follower that resends after a restart, names the
same runs. Jobs live in the namespace ``arl://<ledger id>``: ``<task>.search`` for
searches, ``<task>.<specialist>`` for trials. Datasets are content-addressed: programs,
diffs, artifacts and logs by their sha256 (also in a DatasetVersionDatasetFacet), the
training data by the digest the evaluator recorded.

Events are built by one converter fed the log in order (:class:`LineageEvents`); the
batch export and the follower differ only in where the events go.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attr
from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
from openlineage.client.facet_v2 import (
    BaseFacet,
    RunFacet,
    dataset_version_dataset,
    documentation_dataset,
    documentation_job,
    error_message_run,
    job_type_job,
    parent_run,
)
from openlineage.client.serde import Serde

from arl.ledger import __version__
from arl.ledger import events as ev
from arl.ledger.errors import ArlError
from arl.ledger.store import Ledger

#: The producer every event and facet names: arl and its version.
PRODUCER = f"https://arl.dev/arl/{__version__}"
#: Where arl's own facet schemas are identified; the files ship in ``arl/queries/schemas/``.
SCHEMA_BASE = "https://arl.dev/spec/openlineage/1-0-0/"
SCHEMAS = Path(__file__).resolve().parent / "schemas"

COMPLETE_LABELS = frozenset({ev.Label.BASELINE, ev.Label.KEEP, ev.Label.DISCARD})
ABORT_LABELS = frozenset({ev.Label.INFRA_ERROR, ev.Label.DUPLICATE})


class LineageError(ArlError):
    """An OpenLineage target that cannot be written, or a receiver that refuses events."""


def state_of(label: ev.Label) -> RunState:
    """The OpenLineage state a trial with this label ends in."""
    if label in COMPLETE_LABELS:
        return RunState.COMPLETE
    if label in ABORT_LABELS:
        return RunState.ABORT
    return RunState.FAIL


# --- arl's facets -------------------------------------------------------------------------------


@attr.define
class ProposalRunFacet(RunFacet):
    """What was tried in a trial and by whom (``arl_proposal``)."""

    trialId: str  # noqa: N815
    searchId: str  # noqa: N815
    seq: int
    agent: str
    surface: str
    hypothesis: str
    backend: str
    parents: list[str] = attr.field(factory=list)
    expectedDelta: float | None = attr.field(default=None)  # noqa: N815
    startedFrom: str | None = attr.field(default=None)  # noqa: N815

    @staticmethod
    def _get_schema() -> str:
        return SCHEMA_BASE + "ArlProposalRunFacet.json#/$defs/ArlProposalRunFacet"


@attr.define
class OutcomeRunFacet(RunFacet):
    """How a trial ended: its label, score, reason and each legality check (``arl_outcome``)."""

    label: str
    improvement: bool
    reason: str
    score: float | None = attr.field(default=None)
    deltaVsBest: float | None = attr.field(default=None)  # noqa: N815
    evaluator: str | None = attr.field(default=None)
    metrics: dict[str, float | None] = attr.field(factory=dict)
    checks: list[dict[str, Any]] = attr.field(factory=list)

    @staticmethod
    def _get_schema() -> str:
        return SCHEMA_BASE + "ArlOutcomeRunFacet.json#/$defs/ArlOutcomeRunFacet"


@attr.define
class SearchRunFacet(RunFacet):
    """The search a parent run stands for (``arl_search``)."""

    searchId: str  # noqa: N815
    name: str
    task: str
    taskDigest: str  # noqa: N815
    direction: str
    kind: str
    stopReason: str | None = attr.field(default=None)  # noqa: N815

    @staticmethod
    def _get_schema() -> str:
        return SCHEMA_BASE + "ArlSearchRunFacet.json#/$defs/ArlSearchRunFacet"


# --- the converter ----------------------------------------------------------------------------


@attr.define
class _Trial:
    proposed: ev.TrialProposed
    program: str | None = None
    started: bool = False
    ended: bool = False
    run: ev.RunFinished | None = None
    evaluated: ev.TrialEvaluated | None = None


def _time(at: datetime) -> str:
    return at.astimezone(UTC).isoformat()


class LineageEvents:
    """Turns ledger events, fed in log order, into OpenLineage run events.

    ``feed`` returns the run events one ledger event gives (often none). The converter
    keeps what later events need (each trial's proposal and program, each search's task),
    so a follower that restarts feeds the log up to its stored position with ``emit=False``
    and goes on from there.
    """

    def __init__(self, ledger_id: str, search: str | None = None) -> None:
        self.namespace = f"arl://{ledger_id or 'unknown'}"
        self.search = search
        self.searches: dict[str, ev.SearchStarted] = {}
        self.trials: dict[str, _Trial] = {}
        self.program_of: dict[str, str] = {}  # trial id → program digest

    def feed(self, event: ev.Event, *, emit: bool = True) -> list[RunEvent]:
        out = self._convert(event)
        return out if emit else []

    def _convert(self, e: ev.Event) -> list[RunEvent]:
        if isinstance(e, ev.SearchStarted):
            if self.search is not None and e.originator_id != self.search:
                return []
            self.searches[e.originator_id] = e
            return [self._search_event(e, RunState.START, e.at)]
        if isinstance(e, (ev.SearchStopped, ev.SearchResumed)):
            s = self.searches.get(e.originator_id)
            if s is None:
                return []
            if isinstance(e, ev.SearchResumed):
                return [self._search_event(s, RunState.RUNNING, e.at)]
            return [self._search_event(s, RunState.COMPLETE, e.at, stop=e.reason)]
        search_id = getattr(e, "search_id", None)
        if search_id not in self.searches:
            return []
        tid = e.originator_id
        if isinstance(e, ev.TrialProposed):
            self.trials[tid] = _Trial(e)
            return []
        t = self.trials.get(tid)
        if t is None:
            return []
        if isinstance(e, ev.TrialSubmitted):
            t.program = e.program_digest
            self.program_of[tid] = e.program_digest
            return []
        if isinstance(e, ev.TrialClaimed):
            if t.started:
                return [self._trial_event(t, RunState.RUNNING, e.at)]
            t.started = True
            return [self._trial_event(t, RunState.START, e.at, started_from="claim")]
        if isinstance(e, ev.RunFinished):
            if e.refused is not None:
                return []
            t.run = e
            if t.started:
                return []
            t.started = True
            begun = (datetime.fromtimestamp(e.started_at, UTC) if e.started_at
                     else e.at - _seconds(e.wall_s))
            return [self._trial_event(t, RunState.START, min(begun, e.at), started_from="run")]
        if isinstance(e, ev.TrialEvaluated):
            t.evaluated = e
            return []
        if isinstance(e, ev.TrialLabeled):
            if t.ended:
                return []
            out = []
            if not t.started:
                t.started = True
                out.append(self._trial_event(t, RunState.START, t.proposed.at, started_from="proposal"))
            t.ended = True
            out.append(self._trial_event(t, state_of(e.label), e.at, label=e))
            return out
        return []

    # -- building events --------------------------------------------------------------------

    def _search_job(self, s: ev.SearchStarted, *, facets: bool = True) -> Job:
        name = f"{s.task}.search"
        if not facets:
            return Job(namespace=self.namespace, name=name)
        return Job(namespace=self.namespace, name=name, facets={
            "jobType": job_type_job.JobTypeJobFacet(processingType="BATCH", integration="ARL", jobType="SEARCH",
                                                    producer=PRODUCER),
            "documentation": documentation_job.DocumentationJobFacet(
                description=f"arl searches on task {s.task}: specialists propose trials, "
                "runners run them, the task's evaluator labels them", producer=PRODUCER),
        })

    def _search_event(self, s: ev.SearchStarted, state: RunState, at: datetime, stop: str | None = None) -> RunEvent:
        facet = SearchRunFacet(searchId=s.originator_id, name=s.name, task=s.task, taskDigest=s.task_digest,
                               direction=s.direction, kind=s.kind, stopReason=stop, producer=PRODUCER)
        return RunEvent(eventType=state, eventTime=_time(at), producer=PRODUCER,
                        run=Run(runId=s.originator_id, facets={"arl_search": facet}),
                        job=self._search_job(s))

    def _dataset(self, task: str, kind: str, digest: str, doc: str | None = None) -> dict[str, Any]:
        facets: dict[str, Any] = {"version": dataset_version_dataset.DatasetVersionDatasetFacet(
            datasetVersion=f"sha256:{digest}", producer=PRODUCER)}
        if doc:
            facets["documentation"] = documentation_dataset.DocumentationDatasetFacet(
                description=doc, producer=PRODUCER)
        return {"namespace": self.namespace, "name": f"{task}/{kind}/{digest}", "facets": facets}

    def _trial_event(self, t: _Trial, state: RunState, at: datetime, *, started_from: str | None = None,
                     label: ev.TrialLabeled | None = None) -> RunEvent:
        p = t.proposed
        s = self.searches[p.search_id]
        run_facets: dict[str, BaseFacet] = {
            "parent": parent_run.ParentRunFacet(
                run=parent_run.Run(runId=s.originator_id),
                job=parent_run.Job(namespace=self.namespace, name=f"{s.task}.search"),
                root=parent_run.Root(run=parent_run.RootRun(runId=s.originator_id),
                                     job=parent_run.RootJob(namespace=self.namespace, name=f"{s.task}.search")),
                producer=PRODUCER),
            "arl_proposal": ProposalRunFacet(
                trialId=p.originator_id, searchId=p.search_id, seq=p.seq, agent=p.agent, surface=p.surface,
                hypothesis=p.hypothesis, backend=p.backend or "manual", parents=list(p.parents),
                expectedDelta=p.expected_delta, startedFrom=started_from, producer=PRODUCER),
        }
        inputs = [self._dataset(s.task, "programs", self.program_of[parent])
                  for parent in p.parents if parent in self.program_of]
        outputs = []
        if t.program:
            outputs.append(self._dataset(s.task, "programs", t.program))
        if p.edit_digest:
            outputs.append(self._dataset(s.task, "diffs", p.edit_digest))
        if label is not None:
            e = t.evaluated
            checks = [{k: v for k, v in {"name": c.name, "passed": c.passed, "value": c.value, "limit": c.limit,
                                         "detail": c.detail or None, "failsAs": c.fails_as.value}.items()
                       if v is not None} for c in (e.checks if e else ())]
            run_facets["arl_outcome"] = OutcomeRunFacet(
                label=label.label.value, improvement=label.improvement, reason=label.reason,
                score=label.score if label.score is not None else (e.score if e else None),
                deltaVsBest=label.delta_vs_best, evaluator=e.evaluator if e else None,
                metrics=dict(e.metrics) if e else {}, checks=checks, producer=PRODUCER)
            if state is not RunState.COMPLETE:
                tail = t.run.stderr_tail if t.run is not None else ""
                run_facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(
                    message=f"{label.label.value}: {label.reason}" if label.reason else label.label.value,
                    programmingLanguage="python", stackTrace=tail or None, producer=PRODUCER)
            if e is not None and e.data_digest:
                inputs.append(self._dataset(s.task, "data", e.data_digest))
            if t.run is not None:
                for name, digest in sorted(t.run.artifacts.items()):
                    outputs.append(self._dataset(s.task, "artifacts", digest, doc=name))
                if t.run.log_digest:
                    outputs.append(self._dataset(s.task, "logs", t.run.log_digest))
        return RunEvent(
            eventType=state, eventTime=_time(at), producer=PRODUCER,
            run=Run(runId=p.originator_id, facets=run_facets),
            job=Job(namespace=self.namespace, name=f"{s.task}.{p.agent}", facets={
                "jobType": job_type_job.JobTypeJobFacet(processingType="BATCH", integration="ARL", jobType="TRIAL",
                                                        producer=PRODUCER)}),
            inputs=[InputDataset(namespace=d["namespace"], name=d["name"], facets=d["facets"]) for d in _unique(inputs)],
            outputs=[OutputDataset(namespace=d["namespace"], name=d["name"], facets=d["facets"])
                     for d in _unique(outputs)],
        )


def _seconds(wall_s: float) -> timedelta:
    return timedelta(seconds=wall_s if wall_s and wall_s > 0 else 0.0)


def _unique(datasets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for d in datasets:
        seen.setdefault(d["name"], d)
    return list(seen.values())


def to_dict(event: RunEvent) -> dict[str, Any]:
    """The event as the JSON object OpenLineage receivers take."""
    return Serde.to_dict(event)


def lineage_events(ledger: Ledger, search: str | None = None) -> Iterator[tuple[int, RunEvent]]:
    """Every run event of the ledger (or of one search), with the log position it came from."""
    convert = LineageEvents(ledger.ledger_id(), search)
    for nid, e in ledger.iter_events():
        for out in convert.feed(e):
            yield nid, out


# --- where events go --------------------------------------------------------------------------


class Target:
    """A file (NDJSON, one event a line) or an HTTP receiver (``POST …/api/v1/lineage``)."""

    def __init__(self, where: str, *, timeout_s: float = 10.0) -> None:
        self.where = where
        self.timeout_s = timeout_s
        parts = urlsplit(where)
        self.http = parts.scheme in ("http", "https")
        self._file = None
        if self.http:
            import requests

            if not parts.netloc:
                raise LineageError(f"{where!r} names no host; give e.g. http://127.0.0.1:5000")
            self._session = requests.Session()
            path = parts.path if parts.path not in ("", "/") else "/api/v1/lineage"
            self.url = f"{parts.scheme}://{parts.netloc}{path}"
        else:
            path = Path(where).expanduser()
            if path.is_dir():
                raise LineageError(f"{path} is a folder; give a file to write the events into (e.g. {path}/lineage.ndjson)")
            self.path = path

    def open(self, *, append: bool) -> None:
        if not self.http:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = self.path.open("a" if append else "w", encoding="utf-8")
            except OSError as e:
                raise LineageError(f"cannot write {self.path}: {e.strerror}; choose a writable file") from e

    def send(self, event: RunEvent) -> None:
        """Deliver one event; raises :class:`LineageError` (``retry`` set) when it did not arrive."""
        body = Serde.to_json(event)
        if not self.http:
            self._file.write(body + "\n")
            self._file.flush()
            return
        import requests

        try:
            r = self._session.post(self.url, data=body, headers={"Content-Type": "application/json"},
                                   timeout=self.timeout_s)
        except requests.RequestException as e:
            raise _Undelivered(f"{self.url} did not answer ({type(e).__name__})", retry=True) from e
        if r.status_code >= 500 or r.status_code == 429:
            raise _Undelivered(f"{self.url} answered {r.status_code}", retry=True)
        if r.status_code >= 400:
            raise _Undelivered(f"{self.url} refused an event of run {event.run.runId} with {r.status_code}: "
                               f"{' '.join(r.text.split())[:200]}; fix the receiver or the URL", retry=False)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.http:
            self._session.close()


class _Undelivered(LineageError):
    def __init__(self, message: str, *, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


def export_openlineage(ledger: Ledger, where: str, search: str | None = None) -> dict[str, int]:
    """Write or send every run event; returns counts by event type (and ``events``)."""
    target = Target(where)
    target.open(append=False)
    counts: dict[str, int] = {"events": 0}
    try:
        for _, event in lineage_events(ledger, search):
            target.send(event)
            counts["events"] += 1
            counts[event.eventType.value] = counts.get(event.eventType.value, 0) + 1
    finally:
        target.close()
    return counts


# --- the live follower --------------------------------------------------------------------------


class Position:
    """The log position a follower has delivered everything up to, kept in a small JSON file.

    Written atomically (a temporary file renamed over it) after each ledger event's run
    events have all been delivered: a follower killed at any moment resends at most the
    events of one ledger event, under the same run ids (at-least-once).
    """

    def __init__(self, path: Path, ledger_id: str, where: str) -> None:
        self.path, self.ledger_id, self.where = path, ledger_id, where

    def load(self) -> int:
        if not self.path.exists():
            return 0
        try:
            state = json.loads(self.path.read_text())
            position = int(state["position"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise LineageError(f"{self.path} is not a follower's position file ({type(e).__name__}); "
                               "remove it to resend everything, or pass another --state") from e
        if state.get("ledger") != self.ledger_id:
            raise LineageError(f"{self.path} is the position of another ledger ({state.get('ledger')}); "
                               "pass another --state for this one")
        return position

    def save(self, position: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"ledger": self.ledger_id, "target": self.where, "position": position}))
        os.replace(tmp, self.path)


def default_state(ledger_id: str, where: str) -> Path:
    import hashlib

    key = hashlib.sha256(f"{ledger_id} {where}".encode()).hexdigest()[:16]
    return Path(".arl") / "lineage" / f"{key}.json"


def follow(ledger: Ledger, where: str, *, state: Path | None = None, search: str | None = None,
           stop: threading.Event | None = None, retry_s: float = 1.0, max_retry_s: float = 30.0,
           say: Callable[[str], None] | None = None) -> int:
    """Stream run events to ``where`` as the ledger grows, until ``stop``; returns events sent.

    Resumes after the position stored in ``state``; an event the target did not take is
    retried (the receiver down, a 5xx) with a growing pause, and the position does not move
    past it, so nothing is lost. A receiver that refuses an event (4xx) ends the follower
    with :class:`LineageError`, its position still before that event.
    """
    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    stop = stop or threading.Event()
    ledger_id = ledger.ledger_id()
    position = Position(state or default_state(ledger_id, where), ledger_id, where)
    after = position.load()
    target = Target(where)
    target.open(append=True)
    convert = LineageEvents(ledger_id, search)
    sent = 0
    try:
        for _, e in _upto(ledger, after):  # rebuild what the converter knows, sending nothing
            convert.feed(e, emit=False)
        say(f"following {ledger.url.display()} from position {after:,} into {where}")
        for nid, e in ledger.follow(after, stop):
            for out in convert.feed(e):
                if not _deliver(target, out, stop, retry_s, max_retry_s, say):
                    return sent  # stopped while the receiver was away: the position stays before nid
                sent += 1
            position.save(nid)
    finally:
        target.close()
    return sent


def _upto(ledger: Ledger, position: int) -> Iterable[tuple[int, ev.Event]]:
    for nid, e in ledger.iter_events():
        if nid > position:
            return
        yield nid, e


def _deliver(target: Target, event: RunEvent, stop: threading.Event, retry_s: float, max_retry_s: float,
             say: Callable[[str], None]) -> bool:
    pause = retry_s
    while True:
        try:
            target.send(event)
            return True
        except _Undelivered as e:
            if not e.retry:
                raise
            say(f"{e}; retrying in {pause:g} s (nothing is skipped)")
            if stop.wait(pause):
                return False
            pause = min(pause * 2, max_retry_s)
