"""The search driver: the closed loop of `arl run`.

Records ``SearchStarted``, measures the base program as the baseline trial,
then keeps the workers busy: whenever fewer trials are in flight than there
are workers, the next specialist (round robin) gets its lineage view and
proposes; the proposal is submitted, or recorded with its label if it could not
become a program. It stops when the trial budget (charged labels only) is
spent, or on Ctrl-C, with ``SearchStopped``; ``--resume`` continues a search.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, TextIO

import msgspec

from arl.agents.base import Proposal, Specialist
from arl.agents.lineage import SATURATION, TrialLine, build_view
from arl.agents.usage import TokenMeter
from arl.ledger import events as ev
from arl.ledger.errors import ArlError
from arl.ledger.programs import Program, ProgramCache, put_program, read_folder
from arl.ledger.projections import BASELINE_AGENT, Projector, SearchRow, State, TrialRow, relative_gain
from arl.ledger import source_version
from arl.ledger.searches import find_search, search_config
from arl.ledger.store import Ledger, hostname
from arl.runners.config import INSTALL_SANDBOX, SearchConfig
from arl.runners.devices import DeviceError, DevicePool, Devices, parse, per_trial, shortfall
from arl.runners.sandbox import bwrap_path
from arl.runners.team import build_team, check_config
from arl.runners.trials import base_program, record_next, record_proposal, start_search, submit
from arl.runners.worker import Worker
from arl.tasks.adapters import bind, recorded_paths
from arl.tasks.manifest import Task
from arl.tasks.registry import resolve, task_of

__all__ = ["Search", "SearchConfig", "SearchError", "Summary", "render_summary", "run_search", "summarize"]


class SearchError(ArlError):
    pass


#: Backends that answer at once: a round with no proposal from any of them ends the search.
OFFLINE = ("tuner", "random", "tpe")
#: Seconds a submitted trial may wait unclaimed before the progress line says so.
UNCLAIMED_S = 5.0


class Summary(msgspec.Struct, kw_only=True):
    search_id: str
    name: str
    task: str
    metric: str
    direction: str
    trials: int
    charged: int
    running: int
    baseline: float | None
    best: float | None
    best_seq: int | None
    best_agent: str | None
    labels: dict[str, int]
    keeps_by_agent: dict[str, int]
    stopped: str | None
    elapsed_s: float
    #: Why the search could not go on, with what to do (a failed baseline); None otherwise.
    problem: str | None = None
    #: The noise floor it judged by, where it came from, and a contradicted manifest floor.
    noise_floor: float = 0.0
    floor_source: str = "manifest"
    floor_note: str = ""
    #: The trials in flight and the runner of each ("#7 on slurm-123_4@node07").
    running_on: tuple[str, ...] = ()
    #: The search's ``--sandbox``: "none" when the user let model-written code run without one.
    sandbox: str = "bwrap"

    @property
    def gain(self) -> float | None:
        """Relative improvement of the best over the baseline (positive = better)."""
        return relative_gain(self.direction, self.best, self.baseline)


def summarize(state: State, search_id: str, metric: str, trials: int, *, sandbox: str = "bwrap") -> Summary:
    search: SearchRow = state.searches[search_id]
    rows = state.trials_of(search_id)
    labels = Counter(r.label.value for r in rows if r.label is not None)
    keeps = Counter(r.agent for r in rows if r.label is not None and r.label.value == "keep")
    best = state.trials.get(search.best_trial) if search.best_trial else None
    started = search.started_at.timestamp() if search.started_at else time.time()
    last = max((r.labeled_at.timestamp() for r in rows if r.labeled_at), default=started)
    return Summary(
        search_id=search_id, name=search.name, task=search.task, metric=metric,
        direction=search.direction, trials=trials, charged=search.charged,
        running=sum(1 for r in rows if r.label is None), baseline=search.baseline_score,
        best=search.best_score, best_seq=best.seq if best else None,
        best_agent=best.agent if best else None, labels=dict(labels.most_common()),
        keeps_by_agent=dict(keeps.most_common()), stopped=search.stop_reason,
        elapsed_s=last - started, sandbox=sandbox, noise_floor=search.noise_floor,
        floor_source=search.floor_source, floor_note=search.floor_note,
        running_on=tuple(f"#{r.seq} on {r.runner}" for r in sorted(rows, key=lambda r: r.seq)
                         if r.label is None and r.status in ("claimed", "finished", "evaluated") and r.runner),
    )


def render_summary(s: Summary, where: str) -> str:
    gain = f" ({s.gain:+.1%} vs baseline {s.baseline:.6g})" if s.gain is not None else ""
    best = (f"best: trial #{s.best_seq} by {s.best_agent} — {s.metric} {s.best:.6g}{gain}"
            if s.best is not None else "best: no legal result yet")
    keeps = ", ".join(f"{a} {n}" for a, n in s.keeps_by_agent.items()) or "none"
    labels = ", ".join(f"{k} {n}" for k, n in s.labels.items()) or "none"
    state = f"stopped ({s.stopped})" if s.stopped else f"running ({s.running} in flight)"
    return "\n".join([
        f"search {s.name} [{s.search_id}] on {s.task}: {s.charged}/{s.trials} trials, {state}, "
        f"{_duration(s.elapsed_s)}",
        best,
        f"keeps by specialist: {keeps}",
        f"labels: {labels}",
        f"noise floor: {s.noise_floor:.4g} ({s.floor_source})" + (f" — {s.floor_note}" if s.floor_note else ""),
        *([f"running: {', '.join(s.running_on)}"] if s.running_on else []),
        *([f"sandbox: none (--sandbox none: recipes ran without bubblewrap where it is missing; "
           f"see each run's sandbox in arl show)"] if s.sandbox == "none" else []),
        f"ledger: {where}   (arl status {s.search_id[:8]} · arl show {s.search_id[:8]}#SEQ · "
        f"arl report --search {s.search_id[:8]} -o report.html)",
    ])


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Search:
    """One search being driven. Build with :meth:`start` or :meth:`resume`, then :meth:`run`.

    It is its specialists' :class:`~arl.agents.base.SearchSeat`: what they may read of it.
    """

    def __init__(self, ledger: Ledger, task: Task, search_id: str, config: SearchConfig,
                 team: list[Specialist], *, out: TextIO = sys.stderr,
                 base_program: dict[str, bytes] | None = None) -> None:
        self.ledger = ledger
        self.task = task
        self.search_id = search_id
        self.config = config
        self.team = team
        self.out = out
        #: The starting program: the task's recipe, or a forked trial's program.
        self.base_program = base_program if base_program is not None else read_folder(task.recipe_dir)
        self.origin: list = []
        self.projector = Projector(ledger, name=f"search/{search_id}", checkpoint_s=30.0)
        self.programs = ProgramCache(ledger)
        #: Why the search could not go on (a failed baseline), for the summary.
        self.problem: str | None = None
        #: The devices the in-process workers share (None: none; trials needing GPUs wait
        #: for `arl worker` processes, and the progress line says so).
        self.devices: Devices | None = None
        self._turn = 0
        self._proposals = 0
        self._queued_since: dict[str, float] = {}

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def start(cls, ledger: Ledger, task: Task, config: SearchConfig, *, name: str | None = None,
              team_factory: Callable[..., list[Specialist]] | None = None, out: TextIO = sys.stderr,
              kind: str = "search", origin: tuple[str | None, str | None] = (None, None),
              base_program: dict[str, bytes] | None = None) -> Search:
        if team_factory is None:
            check_config(config)  # a search that cannot be driven is never recorded
        extra = {}
        if base_program is not None:
            extra["base_program"] = put_program(ledger, base_program)
        search_id = start_search(
            ledger, task, name=name or f"{task.name}-{time.strftime('%Y%m%d-%H%M%S')}",
            config={**msgspec.to_builtins(config), **extra}, kind=kind,
            origin_search=origin[0], origin_trial=origin[1],
        )
        search = cls(ledger, task, search_id, config, [], out=out, base_program=base_program)
        try:
            search._load_origin(origin[1])
            search.team = (team_factory or build_team)(task, config, search)
        except BaseException as e:  # never leave a search that `arl status` shows running forever
            search._record_stop(f"failed to start: {' '.join(str(e).split())[:300]}")
            raise
        return search

    def _load_origin(self, trial: str | None) -> None:
        """For a fork: the chain that led to its starting program, shown to its agents."""
        if trial is None:
            return
        state = self.projector.catch_up()
        self.origin = [TrialLine.of(state.trials[t]) for t in state.lineage(trial)]

    @classmethod
    def resume(cls, ledger: Ledger, search_ref: str, *, team_factory: Callable[..., list[Specialist]] | None = None,
               out: TextIO = sys.stderr, given: dict[str, Any] | None = None) -> Search:
        """Continue a search; ``given`` are options the user passed again (``--trials 50``): what
        may change (:data:`~arl.runners.config.RESUMABLE`) is applied and recorded, the rest refused."""
        search_id = find_search(ledger, search_ref)
        started = ledger.stream(search_id)[0]
        config = SearchConfig.of(search_config(ledger, search_id))
        changes = config.changed_on_resume(given or {})  # refuses before anything is recorded
        task = task_of(started)
        config = msgspec.structs.replace(config, **{k: new for k, (_old, new) in changes.items()})
        search = cls(ledger, task, search_id, config, [], out=out,
                     base_program=base_program(ledger, started, task))
        search._load_origin(started.origin_trial)
        search.team = (team_factory or build_team)(task, search.config, search)
        ledger.append(ev.SearchResumed(originator_id=search_id, originator_version=ledger.version(search_id) + 1,
                                       changes=changes, arl_version=source_version(), host=hostname()))
        return search

    # -- what specialists read ----------------------------------------------------------------

    @property
    def lineage(self) -> bool:
        return self.config.lineage

    def program_of(self, trial_id: str) -> Program:
        row = self.projector.state.trials[trial_id]
        if row.program_digest is None:
            raise SearchError(f"trial {trial_id[:8]} has no program")
        return self.programs.get(row.program_digest)

    # -- the loop --------------------------------------------------------------------------------

    def run(self) -> Summary:
        stop = threading.Event()
        pool = DevicePool(self.devices) if self.devices is not None and self.devices.ids else None
        workers = [Worker(self.ledger, name=f"{self.search_id[:8]}-w{i}", pool=pool,
                          say=lambda line: print(line, file=self.out), say_paths=False)
                   for i in range(self.config.workers)]
        threads = [threading.Thread(target=w.run, args=(stop,), daemon=True) for w in workers]
        for t in threads:
            t.start()
        self._started = time.monotonic()
        self._exhausted: str | None = None
        self.problem = None
        error: Exception | None = None
        try:
            self._loop()
            reason = self._exhausted or "trial budget spent"
            if self.problem:  # trials proposed beside the failed baseline go back to the queue
                for w in workers:
                    w.release_why = "the search's baseline failed; back in the queue until it is measured again"
                    w.release.set()
        except KeyboardInterrupt:
            reason = "interrupted"
            print(f"\ninterrupted: recording the stop; {self._in_flight()} trial(s) still running "
                  f"(Ctrl-C again to leave them; `arl run --resume {self.search_id[:8]}` continues)",
                  file=self.out)
        except Exception as e:  # the driver cannot go on: stop on the record, give running trials back
            error = e
            reason = f"failed: {' '.join(str(e).split())[:300]}"
            for w in workers:
                w.release.set()
        stop.set()
        if self.out.isatty() and getattr(self, "_last_line", None) is not None:
            print(file=self.out)  # end the line redrawn in place; the summary follows
        self._record_stop(reason)
        for member in self.team:  # watchers and HTTP clients end with the search
            for part in (member, getattr(member, "client", None), getattr(member, "inbox", None)):
                close = getattr(part, "close", None)
                if callable(close):
                    close()
        try:
            for t in threads:
                while t.is_alive():
                    t.join(0.5)
        except KeyboardInterrupt:
            pass  # their leases expire and a resumed search re-runs them
        if error is not None:
            raise error
        state = self.projector.catch_up()
        self.projector.checkpoint()  # the live projection, kept for `arl replay --verify`
        summary = summarize(state, self.search_id, self.task.objective.metric, self.config.trials,
                            sandbox=self.config.sandbox)
        summary.problem = self.problem
        return summary

    def _loop(self) -> None:
        self._measure_baseline(self.projector.catch_up())
        limit = 3 * self.config.trials + 10  # duplicates and infra errors are free, but not endless
        meter = TokenMeter(self.ledger, self.search_id) if self.config.budget_tokens else None
        while True:
            state = self.projector.catch_up()
            search = state.searches[self.search_id]
            in_flight = self._in_flight()
            self._progress(state)
            failed = state.baseline_failed(self.search_id)
            if failed is not None:  # nothing can be judged against it: stop at once
                self.problem = baseline_problem(
                    self.ledger, self.task, failed,
                    again=f"`arl run --resume {self.search_id[:8]}` measures the base program again and continues")
                self._exhausted = f"baseline failed: {failed.label.value}"
                return
            if meter is not None and self.config.budget_tokens and meter.spent() >= self.config.budget_tokens:
                self._exhausted = "token budget spent"  # no more proposals; the running trials finish
                if in_flight == 0:
                    return
                self.ledger.wait(state.position, 0.5)
                continue
            if search.charged >= self.config.trials:
                if in_flight == 0:
                    return
            elif self._baseline_running_or_done(state) and in_flight < max(1, self.config.workers) \
                    and search.charged + in_flight < self.config.trials and self._proposals < limit:
                if self._propose(state):
                    continue
                if in_flight:
                    self.ledger.wait(state.position, 0.5)
                    continue
                if self.config.agents in OFFLINE and self._baseline_done(state):
                    # Offline specialists answer at once: nothing now means nothing later either.
                    self._exhausted = (f"specialists ran out of proposals after {self._proposals} "
                                       f"({search.charged} charged): every knob and technique of the "
                                       "task's surfaces was tried or is out of range")
                    return
            elif in_flight == 0 and self._baseline_done(state):
                # Nobody proposes anything new (or only duplicates / infra errors came back).
                self._exhausted = (f"specialists ran out of proposals after {self._proposals} "
                                   f"({search.charged} charged)")
                return
            self.ledger.wait(state.position, 0.5)

    def _baseline_running_or_done(self, state: State) -> bool:
        """Proposals start as soon as the baseline is submitted: with several workers the
        baseline then shares the machine as every later trial does, so it is measured under
        the same load (alone, it would run on a quieter machine and look faster)."""
        base = state.baseline_of(self.search_id)
        if base is not None and base.label is None:
            return base.program_digest is not None
        return self._baseline_done(state)

    def _baseline_done(self, state: State) -> bool:
        base = state.baseline_of(self.search_id)
        return base is not None and base.label is ev.Label.BASELINE

    def _measure_baseline(self, state: State) -> None:
        """Submit the starting program as the baseline: trial 0, or — when the last measurement
        failed (a resumed search) — again at the next free number."""
        def measure(seq: int, hypothesis: str = "the starting program") -> str:
            return submit(self.ledger, self.task, self.search_id, seq, agent=BASELINE_AGENT, surface="",
                          program=self.base_program, hypothesis=hypothesis,
                          seeds=self.config.measured_seeds(self.task.seeds, self.task.confirm_seeds))

        failed = state.baseline_failed(self.search_id)
        if not state.trials_of(self.search_id):
            measure(0)
        elif failed is not None:
            again = f"the starting program, measured again (trial #{failed.seq} was {failed.label.value})"
            record_next(self.search_id, self.projector.catch_up, lambda seq: measure(seq, again))

    def _in_flight(self) -> int:
        return sum(1 for r in self.projector.state.trials_of(self.search_id) if r.label is None)

    def _order(self, state: State) -> list[int]:
        return turn_order([s.name for s in self.team], state.trials_of(self.search_id),
                          self._turn, lineage=self.config.lineage)

    def _propose(self, state: State) -> bool:
        """Ask specialists (in `_order`) until one proposes; record it. False if nobody did."""
        for i in self._order(state):
            specialist = self.team[i]
            self._turn = i + 1
            view = build_view(state, self.search_id, specialist=specialist.name,
                              surface=specialist.surface.name, metric=self.task.objective.metric,
                              program_of=self.program_of, lineage=self.config.lineage)
            if self.config.lineage:
                view.origin = self.origin
            proposal = specialist.propose(view)
            if proposal is None:
                continue
            placed = self._record(state, proposal, view.position)
            if placed is None:  # another writer spent the budget meanwhile: nothing recorded
                return True
            trial, seq = placed
            recorded = getattr(specialist, "recorded", None)
            if callable(recorded):
                recorded(proposal, trial, seq)
            self._proposals += 1
            return True
        return False

    def _record(self, state: State, p: Proposal, seen_position: int) -> tuple[str, int] | None:
        """Record a proposal at the next free seq (an MCP client may have taken one meanwhile);
        None, recording nothing, when the others' submissions spent the budget meanwhile (the
        check and the write hold the lock every submitter of the ledger takes)."""
        with self.ledger.exclusive(f"submit {self.search_id}"):
            now = self.projector.catch_up()
            if now.searches[self.search_id].charged + self._in_flight() >= self.config.trials:
                return None
            return record_proposal(self.ledger, self.task, self.search_id, p, state=self.projector.catch_up,
                                   program_of=self.program_of, base=self.base_program,
                                   seen_position=seen_position)

    def _record_stop(self, reason: str) -> None:
        state = self.projector.catch_up()
        summary = summarize(state, self.search_id, self.task.objective.metric, self.config.trials,
                            sandbox=self.config.sandbox)
        summary.problem = self.problem
        version = self.ledger.version(self.search_id)
        self.ledger.append(ev.SearchStopped(originator_id=self.search_id, originator_version=version + 1,
                                            reason=reason, summary=msgspec.to_builtins(summary)))

    def _progress(self, state: State) -> None:
        s = summarize(state, self.search_id, self.task.objective.metric, self.config.trials,
                            sandbox=self.config.sandbox)
        elapsed = time.monotonic() - self._started
        done = max(s.charged, 0)
        eta = (elapsed / done * (self.config.trials - done)) if done else None
        gain = f" ({s.gain:+.1%})" if s.gain is not None else ""
        best = f"best {s.best:.5g}{gain}" if s.best is not None else "best —"
        labels = " ".join(f"{k} {n}" for k, n in s.labels.items())
        line = (f"[{done}/{self.config.trials}] running {s.running} | {best} | {labels}"
                f" | ETA {_duration(eta) if eta is not None else '—'}")
        waiting = unclaimed(self.ledger, state, self.search_id, self.task, self._queued_since)
        if waiting:
            line += f" | {waiting}"
        search = state.searches[self.search_id]
        if search.floor_source == "measured" and not getattr(self, "_floor_shown", False):
            self._floor_shown = True
            print(f"noise floor measured on the starting program: {search.noise_floor:.4g}"
                  + (f"; {search.floor_note}" if search.floor_note else ""), file=self.out, flush=True)
        tty = self.out.isatty()
        # A terminal is redrawn in place with the ticking ETA; a log file gets one line per
        # label (how many trials are running changes twice a trial, and would double the log).
        # A log gets the waiting note when it starts or changes, not each second it ages.
        key = line if tty else (done, best, labels, re.sub(r"\d+m?\d*s", "", waiting))
        if key != getattr(self, "_last_line", None):
            self._last_line = key
            end = "\r" if tty else "\n"
            print(line.ljust(100) if end == "\r" else line, end=end, file=self.out, flush=True)


def unclaimed(ledger: Ledger, state: State, search_id: str, task: Task | None,
              since: dict[str, float] | None = None, *, after_s: float = UNCLAIMED_S) -> str:
    """What the search waits for, when a submitted trial has stood unclaimed over ``after_s``:
    "" otherwise. ``since`` caches when each trial entered the queue (trial id → epoch s)."""
    since = {} if since is None else since
    now = time.time()
    rows = state.trials_of(search_id)
    queued = [r for r in rows if r.trial_id in state.queue]
    for gone in set(since) - {r.trial_id for r in queued}:
        del since[gone]
    oldest: tuple[float, TrialRow] | None = None
    for r in queued:
        if r.trial_id not in since:
            events = ledger.stream(r.trial_id)
            entered = next((e for e in reversed(events) if isinstance(e, (ev.TrialSubmitted, ev.LeaseExpired))), None)
            since[r.trial_id] = entered.at.timestamp() if entered is not None else now
        age = now - since[r.trial_id]
        if age >= after_s and (oldest is None or age > oldest[0]):
            oldest = (age, r)
    if oldest is None:
        return ""
    age, row = oldest
    busy = sum(1 for r in rows if r.status in ("claimed", "finished", "evaluated") and r.label is None)
    if busy:
        return f"trial #{row.seq} queued {_duration(age)}: the workers are busy with {busy} trial(s)"
    gpus = task.needs.gpus if task is not None else 0
    need = f"a worker with {gpus} device(s) (`arl worker --devices …`)" if gpus else "a worker (`arl worker`)"
    return (f"trial #{row.seq} unclaimed for {_duration(age)}: no worker has taken it; it needs {need} "
            "on this store")


def baseline_problem(ledger: Ledger, task: Task, row: TrialRow, *, again: str) -> str:
    """One message for a failed baseline: which check, by how much, the likely cause, and
    ``again``, the command that measures it again."""
    label = row.label.value if row.label else "?"
    finished = next((e for e in reversed(ledger.stream(row.trial_id))
                     if isinstance(e, ev.RunFinished) and e.refused is None), None)
    lines = [f"the base program did not pass (trial #{row.seq}): {label} — {row.reason}"]
    threads = max(1, task.budgets.threads)
    if (finished is not None and row.label in (ev.Label.TRAIN_BUDGET_OVERRUN, ev.Label.EVAL_BUDGET_OVERRUN)
            and finished.wall_s > 1.5 * finished.cpu_s / threads):
        lines.append(f"it took {finished.wall_s:.1f} s of wallclock for {finished.cpu_s:.1f} s of CPU: "
                     "the machine looks busy (other work took the CPU it was budgeted); "
                     "re-measure when it is quieter")
    elif row.label in (ev.Label.CRASH, ev.Label.OOM, ev.Label.ILLEGAL_EDIT, ev.Label.INVALID_EDIT):
        lines.append(f"the task's own program fails: check it with `arl task check {task.root}`")
    else:
        lines.append(f"the task's own program breaks its limits: see `arl task check {task.root}`")
    lines.append(f"no proposal was charged; {again}")
    return "\n".join(lines)


def turn_order(names: list[str], rows: list, turn: int, *, lineage: bool) -> list[int]:
    """Which specialists to ask next (indices into ``names``), first to last.

    In turn while nothing is known; then, with lineage on, in proportion to what each
    has delivered: a specialist's share of the turns is 1 + its keeps while its last
    two trials were not both misses (1 after that, halved once its surface looks
    saturated), and the one furthest below its share goes first (ties: the rotation).
    The control arm (lineage off) keeps a plain rotation: handing out turns by yield
    is itself a use of the lineage.
    """
    n = len(names)
    rotation = [(turn + k) % n for k in range(n)]
    if not lineage:
        return rotation
    turns = dict.fromkeys(names, 0)
    keeps = dict.fromkeys(names, 0)
    flat = dict.fromkeys(names, 0)
    for r in rows:
        if r.seq == 0 or r.agent not in turns:
            continue
        turns[r.agent] += 1
        if r.label is None:
            continue
        if r.label.value == "keep":
            keeps[r.agent] += 1
            flat[r.agent] = 0
        else:
            flat[r.agent] += 1

    def share(i: int) -> float:
        name = names[i]
        # A specialist on a run keeps the ball; two misses in a row hand it back to the rest.
        weight = 1 + keeps[name] if flat[name] < 2 else 1.0
        if flat[name] >= SATURATION:
            weight *= 0.5
        return turns[name] / weight

    return sorted(rotation, key=lambda i: (share(i), rotation.index(i)))


def placement(task: Task, devices: str | None, workers: int, *, workers_given: bool) -> tuple[Devices | None, int]:
    """The devices of a search's in-process workers, and how many workers: for a task that
    needs GPUs, as many as there are disjoint sets of its ``gpus`` (unless ``--workers`` says
    fewer). Refuses, in one line, devices on which no trial of the task could ever run."""
    needed = task.needs.gpus
    if workers == 0 or needed == 0:  # trials run elsewhere, or on no device
        return (parse(devices) if devices is not None else None), workers
    found = parse(devices)
    why = shortfall(needed, found)
    if why is not None:
        raise DeviceError(f"task {task.name}: {why}; or run it with --workers 0 and `arl worker --devices …` "
                          "on the GPU machines")
    sets = len(found.ids) // per_trial(needed, found)
    if workers_given and workers > sets:
        raise DeviceError(f"--workers {workers}: {found.describe()} hold {sets} set(s) of the {needed} device(s) "
                          f"a trial of {task.name} needs; give --workers {sets} or fewer, or more devices")
    return found, workers if workers_given else sets


def path_lines(task: Task) -> list[str]:
    """Where an adapter task's checkout and data came from, for a search's header."""
    lines = []
    if task.checkout_root:
        lines.append(f"  checkout {task.checkout_root} (from {task.checkout_from or '?'})")
    if task.data_root:
        lines.append(f"  data     {task.data_root} (from {task.data_from or '?'})")
    return lines


def run_search(ledger: Ledger, task_ref: str, config: SearchConfig, *, name: str | None = None,
               resume: str | None = None, given: dict[str, Any] | None = None,
               out: TextIO = sys.stderr, devices: str | None = None) -> Summary:
    """Start a search of ``task_ref`` with ``config``, or continue ``resume`` (``given``: the
    options passed again, see :meth:`Search.resume`); ``devices``: ``--devices`` as given
    (None: the visible GPUs, for a task that needs them)."""
    given = dict(given or {})
    if resume:
        recorded = SearchConfig.of(search_config(ledger, find_search(ledger, resume)))
        task = task_of(ledger.stream(find_search(ledger, resume))[0])
        workers = int(given.get("workers", recorded.workers))
        found, workers = placement(task, devices, workers, workers_given=True)
        search = Search.resume(ledger, resume, out=out, given=given)
    else:
        task = bind(resolve(task_ref), recipe_from=config.recipe_from, data=config.data)
        found, workers = placement(task, devices, config.workers, workers_given="workers" in given)
        config = msgspec.structs.replace(config, workers=workers, **recorded_paths(task))
        config.measured_seeds(task.seeds, task.confirm_seeds)  # a bad --baseline-seeds fails before anything is recorded
        search = Search.start(ledger, task, config, name=name, out=out)
    search.devices = found
    print(f"search {search.search_id[:8]} on {search.task.name}: {search.config.trials} trials, "
          f"{search.config.workers} worker(s), agents {search.config.agents}, "
          f"lineage {'on' if search.config.lineage else 'off'}"
          + (", sandbox none (--sandbox none)" if search.config.sandbox == "none" else ""), file=out)
    if bwrap_path() is None:
        print(f"warning: no sandbox: recipes run without bubblewrap, with your permissions; {INSTALL_SANDBOX}",
              file=out)
    if found is not None and search.config.workers:
        per = f", {per_trial(task.needs.gpus, found)} per trial" if task.needs.gpus else ""
        if task.needs.gpus and per_trial(task.needs.gpus, found) < task.needs.gpus:
            per += f" (a dry run: the task needs {task.needs.gpus} GPUs)"
        print(f"  devices  {found.describe()}{per}", file=out)
    for line in path_lines(search.task):
        print(line, file=out)
    return search.run()
