"""Replay: verify projections, re-run recorded trials, re-drive the agents; and fork.

* ``verify``: fold the log from the first event and compare, view by view, with
  every live projection stored in the ledger (each caught up to the head).
* ``rerun``: execute the recorded programs again (same digests, seeds and
  budgets) as a new search linked to the original, and report agreement.
* ``redrive``: feed every specialist the very view it saw (the proposal records
  the log position its view was built at) and recorded model replies instead of
  a model, and check each proposal, edit and program comes out identical.
* ``fork``: a new search whose starting program is one trial's program, with
  the lineage that led there shown to its agents.
"""

from __future__ import annotations

import hashlib
import statistics
import sys
import threading
from typing import TextIO

import msgspec

from arl.agents.lineage import build_view
from arl.ledger import events as ev
from arl.ledger.errors import ArlError
from arl.ledger.programs import get_program, program_digest, unified_diff
from arl.ledger.projections import PROJECTION_VERSION, State, rebuild
from arl.ledger.searches import find_search
from arl.ledger.store import Ledger, decode_states
from arl.runners.config import SearchConfig
from arl.runners.inspect import find_trial
from arl.runners.search import Search, baseline_problem, summarize
from arl.runners.team import build_team
from arl.runners.trials import start_search, submit
from arl.runners.worker import Worker
from arl.tasks.legality import merged_surfaces
from arl.tasks.registry import task_of


class ReplayError(ArlError):
    pass


# --- verify -------------------------------------------------------------------------


def search_digests(state: State, search_id: str) -> dict[str, str]:
    """One digest per view, restricted to one search."""
    enc = msgspec.msgpack.Encoder()
    trials = {t: r for t, r in state.trials.items() if r.search_id == search_id}
    parts = {
        "trials": trials,
        "lineage": {t: state.children.get(t, []) for t in trials},
        "searches": state.searches.get(search_id),
        "counts": {k: v for table in (state.by_agent, state.by_surface)
                   for k, v in table.items() if k.startswith(f"{search_id}/")},
        "queue": {t: n for t, n in state.queue.items() if t in trials},
    }
    return {name: hashlib.sha256(enc.encode(value)).hexdigest() for name, value in parts.items()}


class ViewCheck(msgspec.Struct):
    projection: str
    view: str
    same: bool
    live: str
    rebuilt: str


def verify(ledger: Ledger, search_ref: str) -> list[ViewCheck]:
    """Compare every stored live projection (caught up) with a rebuild from zero."""
    search_id = find_search(ledger, search_ref)
    rebuilt = rebuild(ledger)
    expected = search_digests(rebuilt, search_id)
    checks = []
    for name in ledger.checkpoint_names():
        if not name.endswith(f"/v{PROJECTION_VERSION}"):
            continue  # another arl version's layout: never loaded, so nothing to compare
        stored = ledger.load_checkpoint(name)
        try:
            live = State.from_bytes(stored[2])
        except msgspec.DecodeError:
            checks.append(ViewCheck(name, "*", False, "undecodable", "-"))
            continue
        for nid, event in ledger.iter_events(after=live.position):
            live.apply(nid, event)
        got = search_digests(live, search_id)
        checks += [ViewCheck(name, view, got[view] == expected[view], got[view][:16], expected[view][:16])
                   for view in expected]
    if not checks:  # no stored projection: an incremental fold in small steps vs one pass
        live = State()
        after = 0
        while batch := ledger.read(after, 97):
            live.apply_all(batch)
            after = batch[-1][0]
        got = search_digests(live, search_id)
        checks = [ViewCheck("incremental", v, got[v] == expected[v], got[v][:16], expected[v][:16])
                  for v in expected]
    return checks


# --- rerun ----------------------------------------------------------------------------


class Disagreement(msgspec.Struct):
    seq: int
    original: str
    replayed: str
    original_score: float | None
    replayed_score: float | None
    why: str


class RerunReport(msgspec.Struct, kw_only=True):
    original: str
    replay: str
    trials: int
    same_label: int
    same_outcome: int = 0  # both legal (keep/discard are relative to a best that moves too), or the same failure
    not_rerun: int
    #: Trials whose re-run gave exactly the recorded score (or, both, no score).
    same_score: int = 0
    score_diffs: list[float]
    #: The same differences with their sign (re-run minus original), in trial order.
    score_shifts: list[float] = []
    noise_floor: float
    disagreements: list[Disagreement]

    def render(self) -> str:
        share = self.same_label / self.trials if self.trials else 0.0
        lines = [f"re-ran {self.trials} trials of search {self.original[:8]} as search {self.replay[:8]}"
                 + (f" ({self.not_rerun} never ran: rejected at submission)" if self.not_rerun else ""),
                 f"identical labels: {self.same_label}/{self.trials} ({share:.0%}); "
                 f"same outcome (legal, or the same failure): {self.same_outcome}/{self.trials}; "
                 f"identical scores: {self.same_score}/{self.trials}"]
        if self.score_diffs:
            med, top = statistics.median(self.score_diffs), max(self.score_diffs)
            lines.append(f"score drift |Δ|: median {med:.4g}, max {top:.4g} "
                         f"({_in_floors(self.noise_floor, med, top)}"
                         + (f" {self.noise_floor:g})" if self.noise_floor else ")"))
        if len(self.score_shifts) >= 3:
            # A machine that is faster or slower today moves every score the same way;
            # what is left around that shift is the trial-to-trial noise.
            shift = statistics.median(self.score_shifts)
            rest = [abs(d - shift) for d in self.score_shifts]
            around = statistics.median(rest)
            lines.append(f"  of which common to all trials (median signed Δ): {shift:+.4g}; around it: "
                         f"median {around:.4g}, max {max(rest):.4g} ({_in_floors(self.noise_floor, around, max(rest))})")
        for d in self.disagreements:
            lines.append(f"  #{d.seq}: {d.original} → {d.replayed} "
                         f"({_num(d.original_score)} → {_num(d.replayed_score)}): {d.why}")
        return "\n".join(lines)


def _in_floors(floor: float, *drifts: float, digits: int = 2) -> str:
    """Drifts in units of the noise floor ("0.12 and 0.50 × the noise floor"); a floor of 0 said so."""
    if not floor:
        return "the noise floor is 0"
    return " and ".join(f"{d / floor:.{digits}f}" for d in drifts) + " × the noise floor"


def _num(x: float | None) -> str:
    return "—" if x is None else f"{x:.5g}"


def _seq_range(spec: str | None) -> range | None:
    if not spec:
        return None
    try:
        a, _, b = spec.partition("..")
        return range(int(a), int(b or a) + 1)
    except ValueError:
        raise ReplayError(f"--trials {spec!r}: give a range of trial numbers like 0..20") from None


def rerun(ledger: Ledger, search_ref: str, *, trials: str | None = None, workers: int = 1,
          out: TextIO = sys.stderr) -> RerunReport:
    original = find_search(ledger, search_ref)
    started = ledger.stream(original)[0]
    task = task_of(started)
    state = rebuild(ledger)
    wanted = _seq_range(trials)
    rows = [r for r in state.trials_of(original) if wanted is None or r.seq in wanted]
    ran = [r for r in rows if r.program_digest is not None]
    replay = start_search(ledger, task, name=f"rerun of {started.name}", kind="replay",
                          origin_search=original,
                          # a floor the original measured on its baseline is measured again the same way
                          config={"replay": "rerun", "trials": len(ran), "workers": workers,
                                  "baseline_seeds": SearchConfig.of(started).baseline_seeds})
    seeds = {e.originator_id: e.seeds for _, e in ledger.iter_events() if isinstance(e, ev.TrialSubmitted)}
    print(f"re-running {len(ran)} trials of {original[:8]} as search {replay[:8]} "
          f"with {workers} worker(s) …", file=out)
    base = ran[0] if ran and ran[0].seq == 0 else None
    for row in ran:
        if row.seq == 1 and base is not None and not _ran_beside(row, base):
            drain(ledger, 1)  # the baseline alone first, as the original search measured it
        program = get_program(ledger, row.program_digest)
        parent = (get_program(ledger, state.trials[row.parents[0]].program_digest)
                  if row.parents and state.trials.get(row.parents[0]) and state.trials[row.parents[0]].program_digest
                  else program)
        submit(ledger, task, replay, row.seq, agent=row.agent, surface=row.surface, program=program,
               parent_program=parent, parents=tuple(ev.trial_id(replay, state.trials[p].seq)
                                                    for p in row.parents if p in state.trials),
               hypothesis=row.hypothesis, expected_delta=row.expected_delta, backend=row.backend,
               seeds=seeds.get(row.trial_id), also_surfaces=merged_surfaces(state, row.parents))
    drain(ledger, workers)
    after = rebuild(ledger)
    failed = after.baseline_failed(replay)
    if failed is not None:  # nothing else was judged against it (the trials wait in the queue)
        ledger.append(ev.SearchStopped(originator_id=replay, originator_version=ledger.version(replay) + 1,
                                       reason=f"baseline failed: {failed.label.value}"))
        raise ReplayError(baseline_problem(ledger, task, failed,
                                           again=f"`arl replay {original[:8]} --rerun` measures it again"))
    # Drift is judged against the floor the original search judged by (measured, or the manifest's).
    report = agreement(original, replay, ran, {r.seq: r for r in after.trials_of(replay)},
                       noise_floor=state.searches[original].noise_floor, not_rerun=len(rows) - len(ran))
    summary = summarize(after, replay, task.objective.metric, len(ran))
    ledger.append(ev.SearchStopped(originator_id=replay, originator_version=ledger.version(replay) + 1,
                                   reason="rerun complete", summary={
                                       **msgspec.to_builtins(summary),
                                       "agreement": msgspec.to_builtins(report)}))
    return report


def agreement(original: str, replay: str, ran: list, replayed: dict[int, object], *,
              noise_floor: float, not_rerun: int = 0) -> RerunReport:
    """Compare each original trial row with its re-run (by seq)."""
    report = RerunReport(original=original, replay=replay, trials=len(ran), same_label=0,
                         not_rerun=not_rerun, score_diffs=[], noise_floor=noise_floor, disagreements=[])
    for row in ran:
        new = replayed[row.seq]
        both_legal = new.label is not None and row.label is not None and new.label.legal and row.label.legal
        if new.label == row.label or both_legal:
            report.same_outcome += 1
        if new.label == row.label:
            report.same_label += 1
        else:
            why = new.reason or row.reason
            if both_legal and new.score is not None and row.score is not None:
                drift = new.score - row.score
                why = (f"score moved {drift:+.4g} ({_in_floors(noise_floor, abs(drift), digits=1)}); keep or discard is "
                       "judged against the best so far, which moved too")
            report.disagreements.append(Disagreement(
                row.seq, row.label.value if row.label else "—", new.label.value if new.label else "—",
                row.score, new.score, why))
        if new.score == row.score:
            report.same_score += 1
        if row.score is not None and new.score is not None:
            report.score_diffs.append(abs(new.score - row.score))
            report.score_shifts.append(new.score - row.score)
    return report


def _ran_beside(first, base) -> bool:
    """Whether the original search proposed its first trial while the baseline still ran."""
    return (first.proposed_at is not None and base.labeled_at is not None
            and first.proposed_at < base.labeled_at)


def drain(ledger: Ledger, workers: int) -> None:
    """Run every submitted trial with ``workers`` workers side by side; return when none is left."""
    pool = [Worker(ledger, name=f"replay-w{i}") for i in range(max(1, workers))]
    threads = [threading.Thread(target=w.run, kwargs={"exit_when_idle": True}) for w in pool]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


# --- redrive ----------------------------------------------------------------------------


class Mismatch(msgspec.Struct):
    seq: int
    agent: str
    what: str


class RedriveReport(msgspec.Struct, kw_only=True):
    search: str
    proposals: int
    identical: int
    skipped: int
    mismatches: list[Mismatch]

    def render(self) -> str:
        lines = [f"re-drove {self.proposals} proposals of search {self.search[:8]} without a model: "
                 f"{self.identical} identical (proposal, edit digest and program digest)"
                 + (f"; {self.skipped} recorded before positions were kept, not re-driven"
                    if self.skipped else "")]
        lines += [f"  #{m.seq} {m.agent}: {m.what}" for m in self.mismatches]
        return "\n".join(lines)


def redrive(ledger: Ledger, search_ref: str) -> RedriveReport:
    search_id = find_search(ledger, search_ref)
    started = ledger.stream(search_id)[0]
    task = task_of(started)
    config = SearchConfig.of(started)
    if config.agents == "tpe":
        raise ReplayError("a TPE search depends on Optuna's internal state; it cannot be re-driven")
    final = rebuild(ledger)
    proposals = [e for _, e in ledger.iter_events()
                 if isinstance(e, ev.TrialProposed) and e.search_id == search_id and e.seq > 0]
    search = Search(ledger, task, search_id, config, [])
    search.projector.state = final  # programs never change once recorded
    team = {s.name: s for s in build_team(task, config, search, recorded=_recorded_calls(config, proposals))}
    submitted = {e.originator_id: e.program_digest for _, e in ledger.iter_events()
                 if isinstance(e, ev.TrialSubmitted) and e.search_id == search_id}
    report = RedriveReport(search=search_id, proposals=0, identical=0, skipped=0, mismatches=[])
    pending = sorted((p for p in proposals if p.seen_position is not None), key=lambda p: (p.seen_position, p.seq))
    report.skipped = len(proposals) - len(pending)
    state = State()
    for proposal in pending:
        _fold_to(ledger, state, proposal.seen_position)
        specialist = team.get(proposal.agent)
        report.proposals += 1
        if specialist is None:
            report.mismatches.append(Mismatch(proposal.seq, proposal.agent, "no such specialist any more"))
            continue
        view = build_view(state, search_id, specialist=specialist.name, surface=specialist.surface.name,
                          metric=task.objective.metric, program_of=search.program_of,
                          lineage=config.lineage)
        tools = getattr(specialist, "tools", None)
        if tools is not None:
            tools.pin(state)  # an agentic session reads the ledger as it was then
        again = specialist.propose(view)
        problems = _compare(proposal, again, submitted.get(proposal.originator_id), search)
        if problems:
            report.mismatches.append(Mismatch(proposal.seq, proposal.agent, "; ".join(problems)))
        else:
            report.identical += 1
    return report


def _recorded_calls(config: SearchConfig, proposals: list[ev.TrialProposed]) -> dict[str, list[str]] | None:
    """Each specialist's recorded model calls, in order (None: its backend calls no model)."""
    if config.agents not in ("llm", "agentic", "mcp", "inbox"):
        return None
    calls: dict[str, list[str]] = {}
    for p in sorted(proposals, key=lambda p: p.seq):
        if p.agent_call_digest:
            calls.setdefault(p.agent, []).append(p.agent_call_digest)
    return calls


def _fold_to(ledger: Ledger, state: State, position: int) -> None:
    while state.position < position:
        rows = ledger.read_states(state.position, min(20_000, position - state.position))
        if not rows:
            return
        for (nid, _), event in zip(rows, decode_states([r[1] for r in rows]), strict=True):
            state.apply(nid, event)


def _compare(recorded: ev.TrialProposed, again, program: str | None, search: Search) -> list[str]:
    if again is None:
        return ["proposed nothing this time"]
    problems = []
    if again.hypothesis != recorded.hypothesis:
        problems.append(f"hypothesis differs ({again.hypothesis[:60]!r})")
    if tuple(again.parents) != tuple(recorded.parents):
        problems.append("parents differ")
    if again.agent_call_digest != recorded.agent_call_digest:
        problems.append("model call differs")
    again_program = program_digest(again.program) if again.program is not None else None
    if program is not None and again_program != program:
        problems.append(f"program digest {str(again_program)[:12]} ≠ recorded {program[:12]}")
    if again.program is not None and again.parents:
        diff = unified_diff(search.program_of(again.parents[0]), again.program)
        digest = hashlib.sha256(diff.encode()).hexdigest() if diff else None
        if digest != recorded.edit_digest:
            problems.append("edit digest differs")
    return problems


# --- fork --------------------------------------------------------------------------------------


def fork(ledger: Ledger, trial_ref: str, config: SearchConfig, *, name: str | None = None,
         out: TextIO = sys.stderr):
    """Start a search from one trial's program; its agents see how that program was reached."""
    trial = find_trial(ledger, trial_ref)
    state = rebuild(ledger)
    row = state.trials.get(trial)
    if row is None or row.program_digest is None:
        raise ReplayError(f"trial {trial_ref!r} has no program to fork from (it never ran)")
    started = ledger.stream(row.search_id)[0]
    task = task_of(started)
    program = get_program(ledger, row.program_digest)
    search = Search.start(ledger, task, config, name=name or f"fork of {started.name} #{row.seq}",
                          kind="fork", origin=(row.search_id, trial), base_program=program, out=out)
    print(f"search {search.search_id[:8]} forks trial #{row.seq} of {started.name} "
          f"({task.objective.metric} {_num(row.score)}): {config.trials} trials", file=out)
    return search.run()
