"""The trial protocol: every command that writes a trial's events, in the order of its life.

    start_search      SearchStarted
    record_proposal   TrialProposed, then TrialSubmitted — or EditRejected + TrialLabeled
                      when the edit never became a program or breaks scope
                      (``arl.tasks.legality``), at the search's next free number
    claim             TrialClaimed: exactly one runner wins a trial
    expire_leases     LeaseExpired, the trial back in the queue (infra_error after
                      too many lost runners)
    TrialRecorder     what the runner that holds the claim appends: RunFinished,
                      TrialEvaluated + TrialLabeled, or the trial given back

Each command reads the stream it writes, decides, and appends at the next
version; two writers deciding at once race for the same version and the store
lets exactly one win (optimistic concurrency: the other gets ConflictError).
The search driver, the worker, ``arl mcp``, replay and ``arl task check`` write
through these and nothing else.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import msgspec

from arl.agents.base import Proposal
from arl.ledger import events as ev
from arl.ledger import source_version
from arl.ledger.errors import ArlError, ConflictError
from arl.ledger.events import Label
from arl.ledger.programs import Program, get_program, put_program, read_folder, unified_diff
from arl.ledger.projections import BASELINE_AGENT, State
from arl.ledger.store import Ledger, hostname
from arl.tasks import legality
from arl.tasks.code import Evaluator
from arl.tasks.evaluation import Evaluation, SeedRun
from arl.tasks.manifest import Task

#: A proposal gives up after losing this many races for the next trial number.
SEQ_RETRIES = 50
#: stdout/stderr kept inside RunFinished itself (the whole tails go to the log blob).
EVENT_TAIL = 2000


# --- the search ------------------------------------------------------------------------


def start_search(
    ledger: Ledger,
    task: Task,
    *,
    name: str,
    config: Mapping[str, Any] | None = None,
    kind: str = "search",
    origin_search: str | None = None,
    origin_trial: str | None = None,
) -> str:
    """Record SearchStarted; returns the new search id."""
    search = ev.new_search_id()
    ledger.append(
        ev.SearchStarted(
            originator_id=search, originator_version=1, name=name, task=task.name,
            task_digest=task.digest(), direction=task.objective.direction,
            noise_floor=task.objective.noise_floor,
            config={"task_path": task.root, **(config or {})},
            arl_version=source_version(), host=hostname(), kind=kind,
            origin_search=origin_search, origin_trial=origin_trial,
        )
    )
    return search


def base_program(ledger: Ledger, started: ev.SearchStarted, task: Task) -> Program:
    """The program a search starts from: a fork's recorded program, else the task's recipe."""
    digest = started.config.get("base_program")
    return get_program(ledger, digest) if digest else read_folder(task.recipe_dir)


# --- proposing -----------------------------------------------------------------------------


def submit(
    ledger: Ledger,
    task: Task,
    search: str,
    seq: int,
    *,
    agent: str,
    surface: str,
    program: Mapping[str, bytes],
    parent_program: Mapping[str, bytes] | None = None,
    parents: tuple[str, ...] = (),
    hypothesis: str = "",
    expected_delta: float | None = None,
    backend: str = "",
    agent_call_digest: str | None = None,
    seeds: tuple[int, ...] | None = None,
    also_surfaces: tuple[str, ...] = (),
    seen_position: int | None = None,
) -> str:
    """Record a proposal at ``seq``; submit it for running, or reject it if it breaks scope.

    The search's baseline (seq 0, and any re-measure of it) is the base program, proposed
    by the agent ``baseline`` with no parent and no surface.
    """
    trial = ev.trial_id(search, seq)
    parent_program = parent_program if parent_program is not None else program
    diff = unified_diff(parent_program, program)
    edit_digest = ledger.put_blob(diff.encode()) if diff else None
    proposed = ev.TrialProposed(
        originator_id=trial, originator_version=1, search_id=search, seq=seq, agent=agent,
        surface=surface, parents=parents, hypothesis=hypothesis, expected_delta=expected_delta,
        backend=backend, edit_digest=edit_digest, agent_call_digest=agent_call_digest,
        seen_position=seen_position,
    )
    if parents or agent != BASELINE_AGENT:  # the baseline is the starting program itself: no scope
        scope = legality.scope(task, surface, parent_program, program, also=also_surfaces)
        if not scope.passed:
            ledger.append(
                proposed,
                ev.EditRejected(originator_id=trial, originator_version=2, search_id=search,
                                check="scope", reason=scope.detail),
                ev.TrialLabeled(originator_id=trial, originator_version=3, search_id=search,
                                label=scope.label, reason=scope.detail),
            )
            return trial
    ledger.append(
        proposed,
        ev.TrialSubmitted(
            originator_id=trial, originator_version=2, search_id=search,
            program_digest=put_program(ledger, program), budget=task.budget(),
            seeds=tuple(seeds if seeds is not None else task.seeds),
        ),
    )
    return trial


def reject(
    ledger: Ledger,
    search: str,
    seq: int,
    *,
    agent: str,
    surface: str,
    label: Label,
    reason: str,
    parents: tuple[str, ...] = (),
    hypothesis: str = "",
    expected_delta: float | None = None,
    backend: str = "",
    agent_call_digest: str | None = None,
    check: str = "edit",
    seen_position: int | None = None,
) -> str:
    """Record at ``seq`` a proposal whose output never became a program, with its label and reason."""
    trial = ev.trial_id(search, seq)
    ledger.append(
        ev.TrialProposed(
            originator_id=trial, originator_version=1, search_id=search, seq=seq, agent=agent,
            surface=surface, parents=parents, hypothesis=hypothesis, expected_delta=expected_delta,
            backend=backend, agent_call_digest=agent_call_digest, seen_position=seen_position,
        ),
        ev.EditRejected(originator_id=trial, originator_version=2, search_id=search,
                        check=check, reason=reason),
        ev.TrialLabeled(originator_id=trial, originator_version=3, search_id=search,
                        label=label, reason=reason),
    )
    return trial


def next_seq(state: State, search: str) -> int:
    """The search's next trial number, as far as ``state`` knows."""
    return max((r.seq for r in state.trials_of(search)), default=0) + 1


def record_next(search: str, state: Callable[[], State], write: Callable[[int], str]) -> tuple[str, int]:
    """Write a new trial at the next free number; returns (trial id, seq).

    Another writer (the driver, an MCP client, a second client) may take the number
    first: the append then fails with a conflict, and the trial goes in at the next
    number after both the one tried and the latest the projection knows.
    """
    seq = next_seq(state(), search)
    for _ in range(SEQ_RETRIES):
        try:
            return write(seq), seq
        except ConflictError:
            seq = max(seq + 1, next_seq(state(), search))
    raise ArlError(f"could not find a free trial number in search {search[:8]} after {SEQ_RETRIES} tries "
                   f"(last tried #{seq}); too many writers at once — retry")


def record_proposal(
    ledger: Ledger,
    task: Task,
    search: str,
    proposal: Proposal,
    *,
    state: Callable[[], State],
    program_of: Callable[[str], Program],
    base: Program,
    seen_position: int | None = None,
) -> tuple[str, int]:
    """Record a specialist's proposal at the search's next free number; returns (trial id, seq).

    A proposal with a program is submitted (scope-checked against its first parent's
    program, ``base`` when it names none); one without is recorded with its label.
    """
    common = dict(agent=proposal.agent, surface=proposal.surface, parents=proposal.parents,
                  hypothesis=proposal.hypothesis, expected_delta=proposal.expected_delta,
                  backend=proposal.backend, agent_call_digest=proposal.agent_call_digest,
                  seen_position=seen_position)

    def write(seq: int) -> str:
        if proposal.program is None:
            label, reason = proposal.rejected or (Label.INVALID_EDIT, "the agent produced no program")
            return reject(ledger, search, seq, label=label, reason=reason, **common)
        parent = program_of(proposal.parents[0]) if proposal.parents else base
        also = proposal.also_surfaces + legality.merged_surfaces(state(), proposal.parents)
        return submit(ledger, task, search, seq, program=proposal.program, parent_program=parent,
                      also_surfaces=also, **common)

    return record_next(search, state, write)


# --- running -------------------------------------------------------------------------------

#: Events after which a trial waits for a runner.
_CLAIMABLE = (ev.TrialSubmitted, ev.LeaseExpired)


#: Seconds a claim hint holds a trial for the worker that took it (one that dies meanwhile
#: delays the trial this long; the claim itself needs well under a second).
CLAIM_HINT_S = 10.0


def claim_hint(ledger: Ledger, trial: str, version: int, runner: str, *, hold_s: float = CLAIM_HINT_S) -> bool:
    """Whether ``runner`` may try to claim ``trial``, queued at stream ``version``: of many idle
    workers woken by one submission, one gets True and the rest skip the trial without a
    conflict (no stream read, no append). Only advice: :func:`claim` still decides."""
    return ledger.hint_claim(trial, version, runner, hold_s)


def claim(ledger: Ledger, trial: str, runner: str, *, lease_s: float = 60.0) -> ev.TrialClaimed:
    """Take a submitted trial for ``runner``; raises ConflictError if it is not free."""
    events = ledger.stream(trial)
    if not events:
        raise ConflictError(f"trial {trial} does not exist in {ledger.url.display()}")
    last = events[-1]
    if not isinstance(last, _CLAIMABLE):
        raise ConflictError(f"trial {trial} cannot be claimed: its last event is {type(last).__name__}")
    attempt = 1 + sum(isinstance(e, ev.TrialClaimed) for e in events)
    claimed = ev.TrialClaimed(
        originator_id=trial, originator_version=last.originator_version + 1, search_id=last.search_id,
        runner=runner, host=hostname(), lease_s=lease_s, attempt=attempt,
    )
    try:
        ledger.append(claimed)
    except ConflictError:
        raise ConflictError(f"trial {trial} was claimed by another runner first; pick another trial") from None
    return claimed


def expire_leases(ledger: Ledger, state: State, *, max_attempts: int) -> int:
    """Give back trials whose runner went silent past its lease; returns how many.

    A runner's lease lasts ``lease_s`` from its claim, or as long as its heartbeats
    renew it. A trial that lost ``max_attempts`` runners is labelled infra_error.
    """
    expired_count = 0
    now = datetime.now(UTC).timestamp()
    # Only trials past their claim's own lease can have expired; their heartbeats in one query.
    overdue = [row for row in list(state.trials.values())
               if row.status in ("claimed", "finished") and row.claimed_at is not None
               and row.claimed_at.timestamp() + row.lease_s < now]
    beats = ledger.lease_expiries([row.trial_id for row in overdue]) if overdue else {}
    for row in overdue:
        runner, beat = beats.get(row.trial_id, ("", 0.0))
        if runner == (row.runner or "") and beat >= now:
            continue
        events: list[ev.Event] = [ev.LeaseExpired(
            originator_id=row.trial_id, originator_version=row.version + 1,
            search_id=row.search_id, runner=row.runner or "", attempt=row.attempts,
            reason=f"no result from {row.runner} within its {row.lease_s:.0f} s lease",
        )]
        if row.attempts >= max_attempts:
            events.append(ev.TrialLabeled(
                originator_id=row.trial_id, originator_version=row.version + 2,
                search_id=row.search_id, label=Label.INFRA_ERROR,
                reason=f"runner lost {row.attempts} time(s) (last: {row.runner}); not retried again",
            ))
        try:
            ledger.append(*events)
        except ConflictError:
            continue  # the runner was alive after all, or another worker expired it
        expired_count += 1
    return expired_count


def renew_lease(ledger: Ledger, trial: str, runner: str, lease_s: float) -> None:
    """A heartbeat: the runner's lease on ``trial`` lasts ``lease_s`` from now."""
    ledger.renew_lease(trial, runner, time.time() + lease_s)


class StaleLease(Exception):
    """This runner's lease on a trial was taken over while it worked."""


class TrialRecorder:
    """What the runner holding a claim appends, at consecutive versions after the claim."""

    def __init__(self, ledger: Ledger, trial: str, claimed: ev.TrialClaimed) -> None:
        self.ledger = ledger
        self.trial = trial
        self.search = claimed.search_id
        self.version = self.claimed_version = claimed.originator_version
        self.runner = claimed.runner
        self.attempt = claimed.attempt

    def _append(self, *events: ev.Event) -> None:
        for _ in range(5):
            try:
                self.ledger.append(*events)
            except ConflictError:
                later = self.ledger.stream(self.trial, after=self.version)
                if not later or not all(isinstance(e, ev.RunFinished) and e.refused for e in later):
                    self._refuse(events)
                    raise StaleLease(self.trial) from None
                # Only refused late results of a runner that lost this trial came in between:
                # they do not take the trial from us. Record after them.
                self.version += len(later)
                events = tuple(msgspec.structs.replace(e, originator_version=e.originator_version + len(later))
                               for e in events)
                continue
            self.version += len(events)
            return
        raise StaleLease(self.trial)

    def _refuse(self, events: tuple[ev.Event, ...]) -> None:
        """Our lease was taken over: put the late result on the record, marked unused."""
        late = next((e for e in events if isinstance(e, ev.RunFinished)), None)
        what = late or ev.RunFinished(originator_id=self.trial, originator_version=0,
                                      search_id=self.search, runner=self.runner)
        for _ in range(5):
            version = self.ledger.version(self.trial)
            try:
                self.ledger.append(msgspec.structs.replace(
                    what, originator_version=version + 1,
                    refused=f"stale lease: {self.runner} lost this trial before recording "
                            f"(claim at version {self.claimed_version})",
                ))
                return
            except ConflictError:
                continue

    def released(self, why: str = "shutting down") -> None:
        """Give the trial back without a result (the runner is shutting down, or it cannot be judged yet)."""
        self._append(ev.LeaseExpired(
            originator_id=self.trial, originator_version=self.version + 1, search_id=self.search,
            runner=self.runner, attempt=self.attempt, reason=f"released by {self.runner}: {why}",
        ))

    def label(self, label: Label, reason: str, score: float | None = None) -> None:
        self._append(ev.TrialLabeled(originator_id=self.trial, originator_version=self.version + 1,
                                     search_id=self.search, label=label, reason=reason, score=score))

    def run_finished(self, runs: list[SeedRun], artifacts: dict[str, str]) -> None:
        last = runs[-1].process
        failing = next((r.process for r in runs if not r.process.ok), last)
        log = json.dumps({str(r.seed): msgspec.to_builtins(r.process) for r in runs}, indent=1)
        self._append(ev.RunFinished(
            originator_id=self.trial, originator_version=self.version + 1, search_id=self.search,
            runner=self.runner, exit_code=failing.exit_code, signal=failing.signal,
            wall_s=sum(r.process.wall_s for r in runs), cpu_s=sum(r.process.cpu_s for r in runs),
            peak_rss_mb=max(r.process.peak_rss_mb for r in runs),
            timed_out="train" if failing.killed_for == "wallclock" else None,
            stdout_tail=failing.stdout_tail[-EVENT_TAIL:], stderr_tail=failing.stderr_tail[-EVENT_TAIL:],
            artifacts=artifacts, log_digest=self.ledger.put_blob(log.encode()),
            sandbox=failing.sandbox, started_at=runs[0].process.started_at,
        ))

    def evaluated_and_labeled(self, evaluator: Evaluator, evaluation: Evaluation, label: Label,
                              reason: str, deltas: tuple[float | None, float | None],
                              data_digest: str, evidence: ev.Evidence | None = None) -> None:
        metrics = {k: float(v) for k, v in evaluation.metrics.items()}
        self._append(
            ev.TrialEvaluated(
                originator_id=self.trial, originator_version=self.version + 1, search_id=self.search,
                evaluator=evaluator.name, evaluator_version=f"{evaluator.version}+{evaluator.digest[:12]}",
                score=evaluation.score, metrics=metrics, checks=tuple(evaluation.checks),
                seeds=tuple(sorted({*evaluation.per_seed} or ())), data_digest=data_digest,
                verified=evaluation.verified,
            ),
            ev.TrialLabeled(
                originator_id=self.trial, originator_version=self.version + 2, search_id=self.search,
                label=label, score=evaluation.score, improvement=label is Label.KEEP,
                delta_vs_parent=deltas[0], delta_vs_best=deltas[1], reason=reason, evidence=evidence,
            ),
        )
