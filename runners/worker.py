"""The trial worker: follow the log, claim a submitted trial, run it, judge it, record it.

One trial, in order (each step's events are appended at the next stream
version, so a worker that lost its lease cannot record anything more):

1. claim (``TrialClaimed``, with a lease long enough for every run);
2. preflight without running (``arl.tasks.legality``): duplicate program,
   protected files changed, pinned lines, syntax, projected size — labelled at once;
3. run the recipe once per seed under budgets (``runners.sandbox``) and record
   ``RunFinished``;
4. the task's evaluator scores the runs and checks legality;
5. keep, discard or confirm (``runners.labels.decide``): a candidate keep that
   needs it is confirmed on the task's confirmation seeds;
6. ``TrialEvaluated`` and ``TrialLabeled`` in one write.

Every event is written through the trial protocol (``runners.trials``).

Trials whose lease ran out (their worker died) get ``LeaseExpired`` and go back
to the queue; after ``max_attempts`` they are labelled ``infra_error``.
"""

from __future__ import annotations

import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from arl.ledger import events as ev
from arl.ledger.errors import ArlError, ConflictError
from arl.ledger.events import Label
from arl.ledger.programs import Program, ProgramCache, read_folder, write_folder
from arl.ledger.projections import BASELINE_AGENT, Projector, State
from arl.ledger.store import Ledger, hostname
from arl.runners.config import SearchConfig, sandbox_problem
from arl.runners.devices import DevicePool, Devices, per_trial, shortfall, trial_env
from arl.runners.labels import Best, Decision, Floor, decide, label_runs
from arl.runners.sandbox import bwrap_path, hiding_sqlite, run_process
from arl.runners.trials import (
    CLAIM_HINT_S,
    StaleLease,
    TrialRecorder,
    claim,
    claim_hint,
    expire_leases,
    renew_lease,
)
from arl.tasks import legality
from arl.tasks.code import Evaluator, TaskData, load_evaluator, prepare_data, training_feed
from arl.tasks.evaluation import EvalContext, Evaluation, Process, SeedRun
from arl.tasks.manifest import Task
from arl.tasks.outputs import OutputError, read_bytes
from arl.tasks.outputs import check as outputs_check
from arl.tasks.outputs import files as output_files
from arl.tasks.registry import task_of

#: Seconds a recipe killed by SIGTERM from outside waits for this worker's own shutdown signal.
SIGNAL_GRACE_S = 2.0
#: Artifacts kept in the blob store per trial (bigger outputs are named, not kept).
ARTIFACT_BYTES = 64 * 1024 * 1024
#: Processes one run may have at once (a fork bomb is killed above it: label oom).
PIDS_MAX = 512
#: Megabytes one run may write: workspace, ARL_OUT, stdout and stderr together (label size_violation).
WRITE_MB = 8192


@dataclass(frozen=True)
class _Loaded:
    task: Task
    evaluator: Evaluator
    data: TaskData
    data_digest: str


class Worker:
    """Runs trials from one ledger until stopped. Use one per slot."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        name: str | None = None,
        max_attempts: int = 3,
        lease_s: float | None = None,
        heartbeat_s: float | None = 5.0,
        devices: Sequence[str] | None = None,
        pool: DevicePool | None = None,
        work_dir: Path | None = None,
        poll_s: float = 0.5,
        pids_max: int = PIDS_MAX,
        write_mb: float = WRITE_MB,
        sandbox: str = "bwrap",
        say: Callable[[str], None] | None = None,
        say_paths: bool = True,
    ) -> None:
        self.ledger = ledger
        self.name = name or f"{hostname()}:{id(self) & 0xFFFF:04x}"
        self.max_attempts = max_attempts
        self.lease_s = lease_s
        #: Seconds between lease renewals while a trial runs (None: no heartbeats).
        self.heartbeat_s = heartbeat_s
        #: The devices this slot's trials take from (shared with the worker's other slots): a
        #: trial takes as many as its task needs while it runs; recipes see only those.
        if pool is None and devices:
            pool = DevicePool(Devices("cuda", tuple(devices), "given"))
        self.pool = pool
        #: The devices of the trial running now, and the environment that exposes them.
        self.devices: list[str] = []
        self.env: dict[str, str] = {}
        #: Where a trial this worker can never run is reported (once per trial).
        self.say = say
        #: Say which recorded paths a search's task is bound to (a driver in-process says it itself).
        self.say_paths = say_paths
        self._passed_over: set[str] = set()
        #: Set to give back the running trial at once (SIGTERM): its recipe is killed.
        self.release = threading.Event()
        #: Why, as the LeaseExpired of a trial given back that way says.
        self.release_why = "shutting down"
        self.work_dir = work_dir
        self.poll_s = poll_s
        #: Limits on each recipe process tree: processes at once, megabytes written.
        self.pids_max = pids_max
        self.write_mb = write_mb
        #: "none": this worker may run model-written code without a sandbox (``arl worker --sandbox none``).
        self.sandbox = sandbox
        self._refused: set[str] = set()
        self.projector = Projector(ledger, name=f"worker/{self.name}", checkpoint_s=30.0)
        self._tasks: dict[str, _Loaded] = {}
        self._started: dict[str, ev.SearchStarted] = {}
        self.programs = ProgramCache(ledger)
        self._stop = threading.Event()
        #: Set when a trial's confirmation runs were stopped by the worker's shutdown.
        self._interrupted = False
        #: (trial, queued version) → until when another worker holds its claim hint.
        self._hints_lost: dict[tuple[str, int], float] = {}

    # -- the loop --------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None, *, max_trials: int | None = None,
            exit_when_idle: bool = False) -> int:
        """Work until ``stop`` is set (or ``max_trials`` ran, or idle if asked); returns trials run."""
        stop = stop or self._stop
        done = 0
        while not stop.is_set() and not self.release.is_set() and (max_trials is None or done < max_trials):
            if self.step():
                done += 1
                continue
            if exit_when_idle:
                break
            self.ledger.wait(self.projector.state.position, self.poll_s)
        return done

    def step(self) -> bool:
        """Expire dead leases, then claim and run one trial; False if nothing was waiting."""
        state = self.projector.catch_up()
        if self._expire_leases():
            state = self.projector.catch_up()  # the expired trials are back in the queue
        for trial in sorted(state.queue, key=lambda t: not state.trials[t].is_baseline):
            if self._waits_for_baseline(state, trial):
                continue
            if self._needs_sandbox(state.trials[trial].search_id):
                continue  # model-written code and no sandbox here: left to a worker that has one
            queued_at = (trial, state.trials[trial].version)
            if self._hints_lost.get(queued_at, 0.0) > time.monotonic():
                continue  # lost its hint a moment ago: not asked again at every wake
            placed = self._place(trial)
            if placed is None:
                continue  # too few devices here (said once), or they are busy with another trial
            if not claim_hint(self.ledger, trial, queued_at[1], self.name):
                # Another idle worker is claiming it; no race for the same trial.
                self._unplace(placed)
                self._hints_lost = {k: t for k, t in self._hints_lost.items() if t > time.monotonic()}
                self._hints_lost[queued_at] = time.monotonic() + CLAIM_HINT_S
                continue
            try:
                claimed = claim(self.ledger, trial, self.name, lease_s=self._lease_for(trial))
            except ConflictError:
                self._unplace(placed)
                continue  # another worker took it; try the next one
            try:
                self.execute(trial, claimed)
            finally:
                self._unplace(placed)
            return True
        return False

    def _place(self, trial: str) -> list[str] | None:
        """Take the devices the trial's task needs from the pool; None if it cannot run here now."""
        task = self._task_of(trial)
        needed = task.needs.gpus if task is not None else 0
        if needed == 0:
            self.devices, self.env = [], (trial_env("cuda", []) if self.pool is not None else {})
            return []
        have = self.pool.devices if self.pool is not None else Devices("cuda", (), "none given")
        why = shortfall(needed, have)
        if why is not None:
            if trial not in self._passed_over:
                self._passed_over.add(trial)
                if self.say is not None:
                    row = self.projector.state.trials[trial]
                    self.say(f"worker {self.name}: cannot run trial #{row.seq} of search {row.search_id[:8]} "
                             f"({task.name if task else '?'}): {why}")
            return None
        taken = self.pool.take(per_trial(needed, have)) if self.pool is not None else None
        if taken is None:
            return None
        self.devices, self.env = taken, trial_env(self.pool.kind if self.pool else "cuda", taken)
        return taken

    def _unplace(self, placed: list[str]) -> None:
        if placed and self.pool is not None:
            self.pool.give(placed)
        self.devices, self.env = [], {}

    @staticmethod
    def _waits_for_baseline(state: State, trial: str) -> bool:
        """A trial waits while its search's starting program is not measured yet (queued: the
        baseline runs first) or failed its measurement (nothing is judged against a failed
        baseline; ``arl run --resume`` measures it again)."""
        row = state.trials[trial]
        base = state.baseline_of(row.search_id)
        if row.is_baseline or base is None:
            return False
        return state.baseline_failed(row.search_id) is not None or base.status == "submitted"

    def _task_of(self, trial: str) -> Task | None:
        """The task of a queued trial's search; None when it cannot be loaded (execute says why)."""
        try:
            return self._load(self.projector.state.trials[trial].search_id).task
        except ArlError:
            return None

    def _needs_sandbox(self, search_id: str) -> bool:
        """True when the search runs model-written code and neither a sandbox nor the user's
        ``--sandbox none`` (the search's or this worker's) allows it here: its trials stay queued
        for a worker that has one, and this worker says so once."""
        if self.sandbox == "none":
            return False
        try:
            config = SearchConfig.of(self._search_started(search_id))
        except (ArlError, StopIteration, IndexError):
            return False
        problem = sandbox_problem(config, bwrap_path() is not None)
        if problem is not None and search_id not in self._refused:
            self._refused.add(search_id)
            print(f"arl worker {self.name}: not running trials of search {search_id[:8]}: {problem}",
                  file=sys.stderr)
        return problem is not None

    def _lease_for(self, trial: str) -> float:
        """Long enough for every run the trial may need, unless set explicitly."""
        if self.lease_s is not None:
            return self.lease_s
        if self.heartbeat_s is not None:
            return max(30.0, 6 * self.heartbeat_s)  # heartbeats keep long trials alive
        task = self._task_of(trial)
        if task is None:
            return 120.0
        seeds = len(task.seeds) + len(task.confirm_seeds)
        return (task.budgets.wallclock_s * seeds + task.budgets.eval_s * 2) * 1.5 + 30.0

    def _expire_leases(self) -> int:
        return expire_leases(self.ledger, self.projector.state, max_attempts=self.max_attempts)

    # -- one trial ---------------------------------------------------------------------

    def execute(self, trial: str, claimed: ev.TrialClaimed) -> None:
        beating = threading.Event()
        heart = None
        if self.heartbeat_s is not None:
            heart = threading.Thread(target=self._heartbeat, args=(trial, claimed, beating), daemon=True)
            heart.start()
        try:
            self._execute(trial, claimed)
        except StaleLease:
            pass  # the refusal is on the record; the trial belongs to another runner now
        finally:
            beating.set()
            if heart is not None:
                heart.join()

    def _heartbeat(self, trial: str, claimed: ev.TrialClaimed, done: threading.Event) -> None:
        while True:
            try:
                renew_lease(self.ledger, trial, self.name, claimed.lease_s)
            except ArlError:
                pass  # a missed beat only shortens the lease; the next one may get through
            if done.wait(self.heartbeat_s):
                return

    def _execute(self, trial: str, claimed: ev.TrialClaimed) -> None:
        events = self.ledger.stream(trial)
        proposed = next(e for e in events if isinstance(e, ev.TrialProposed))
        submitted = [e for e in events if isinstance(e, ev.TrialSubmitted)][-1]
        record = TrialRecorder(self.ledger, trial, claimed)
        try:
            loaded = self._load(proposed.search_id)
            program = self.programs.get(submitted.program_digest)
        except ArlError as e:
            record.label(Label.INFRA_ERROR, f"cannot prepare the run: {e}")
            return
        verdict = self._preflight(loaded.task, proposed, submitted, program)
        if verdict is not None:
            record.label(*verdict)
            return
        with tempfile.TemporaryDirectory(prefix="arl-trial-", dir=self.work_dir) as tmp:
            root = Path(tmp)
            runs = self._run_seeds(loaded, program, submitted.seeds, root)
            if self._shutting_down(runs):
                record.released(self.release_why)
                return
            record.run_finished(runs, self._keep_artifacts(runs))
            if not _is_baseline(proposed):
                # Nothing is labelled against a search whose baseline failed: not even a failed
                # run, which a busy machine may have caused as it did the baseline's.
                failed_base = self._after_baseline(proposed.search_id).baseline_failed(proposed.search_id)
                if failed_base is not None:
                    record.released(f"the search's baseline (trial #{failed_base.seq}) failed: "
                                    f"{failed_base.label.value}; back in the queue until it is measured again")
                    return
                if self.release.is_set():
                    record.released("the worker stopped while the search's baseline was being measured")
                    return
            failed = label_runs(runs, memory_mb=loaded.task.budgets.memory_mb,
                                wallclock_s=loaded.task.budgets.wallclock_s,
                                pids_max=self.pids_max, write_mb=self.write_mb)
            if failed is not None:
                record.label(*failed)  # nothing is read of a failed run's outputs
                return
            # Before anything reads what the runs made: a link, pipe, socket or device among
            # their files fails the trial (a killed run was labelled above for what killed it).
            reached = self._reached_out(runs)
            if reached is not None:
                record.label(Label.ILLEGAL_EDIT, reached)
                return
            evaluation = self._evaluate(loaded, runs, root)
            if isinstance(evaluation, str) and self._shutting_down([]):
                record.released()  # the evaluator's processes died with the job
                return
            if isinstance(evaluation, str):
                record.label(Label.CRASH, evaluation)
                return
            label, reason, evaluation, evidence = self._judge(loaded, proposed, program, runs, evaluation, root)
            if self._interrupted:
                record.released()  # the confirmation runs were stopped with the worker
                return
        record.evaluated_and_labeled(loaded.evaluator, evaluation, label, reason,
                                     self._deltas(proposed, evaluation.score), loaded.data_digest,
                                     evidence=evidence)

    def _shutting_down(self, runs: list[SeedRun]) -> bool:
        """Whether this worker is giving its trial back rather than judging it.

        Slurm's scancel or preemption signals every process of the job at once: a recipe may
        die of that SIGTERM a moment before this worker's own handler sets ``release``, and
        must not be labelled a crash for it."""
        if any(r.process.killed_for == "cancelled" for r in runs):
            return True
        if any(r.process.signal == signal.SIGTERM and r.process.killed_for is None for r in runs):
            return self.release.wait(SIGNAL_GRACE_S)
        return self.release.is_set()

    def _search_started(self, search_id: str) -> ev.SearchStarted:
        if search_id not in self._started:
            self._started[search_id] = self.ledger.stream(search_id)[0]
        return self._started[search_id]

    def _load(self, search_id: str) -> _Loaded:
        key = search_id
        if key not in self._tasks:
            task = task_of(self._search_started(search_id), need_recipe=False)
            if self.say is not None and self.say_paths:
                from_record = [f"{what} {path} (from {how})" for what, path, how in (
                    ("checkout", task.checkout_root, task.checkout_from), ("data", task.data_root, task.data_from))
                    if path and how.startswith("the search's recorded")]
                if from_record:  # a remembered path is used, and said to be
                    self.say(f"worker {self.name}: search {search_id[:8]} uses {'; '.join(from_record)}")
            data = prepare_data(task)
            self._tasks[key] = _Loaded(task, load_evaluator(task), data, data.digest())
        return self._tasks[key]

    def _preflight(self, task: Task, proposed: ev.TrialProposed, submitted: ev.TrialSubmitted,
                   program: Program) -> tuple[Label, str] | None:
        state = self.projector.state
        for other in state.trials.values():
            if (other.search_id == proposed.search_id and other.seq < proposed.seq
                    and other.program_digest == submitted.program_digest and not _is_baseline(proposed)):
                return Label.DUPLICATE, f"same program as trial {other.seq} ({other.trial_id[:8]})"
        failed = legality.first_failure(legality.preflight(task, program, self._reference(task, proposed)))
        return (failed.label, failed.detail) if failed is not None else None

    def _reference(self, task: Task, proposed: ev.TrialProposed) -> Program:
        """The program legality compares with: the search's baseline program (the task's
        recipe for the baseline itself), so a worker needs no checkout of an adapter task."""
        if not _is_baseline(proposed):
            baseline = self.projector.state.baseline_of(proposed.search_id)
            if baseline is not None and baseline.program_digest:
                return self.programs.get(baseline.program_digest)
        return read_folder(task.recipe_dir) if task.recipe_dir.is_dir() else {}

    def _run_seeds(self, loaded: _Loaded, program: Program, seeds: Sequence[int], root: Path) -> list[SeedRun]:
        task, data = loaded.task, loaded.data
        runs: list[SeedRun] = []
        for seed in seeds:
            workspace, out = root / f"seed{seed}" / "program", root / f"seed{seed}" / "out"
            workspace.mkdir(parents=True)
            out.mkdir()
            write_folder(program, workspace)
            # A fixed training budget: the run gets its bytes on stdin and no training folder.
            fed = training_feed(task, data, seed)
            given = {"ARL_DATA": str(data.train)} if fed is None else {"ARL_TRAIN_TOKENS": str(len(fed))}
            process = run_process(
                task.run.command, cwd=workspace, timeout_s=task.budgets.wallclock_s,
                memory_mb=task.budgets.memory_mb, threads=task.budgets.threads,
                env={**self.env, **given, "ARL_OUT": str(out),
                     "ARL_SEED": str(seed), "ARL_TRAIN_BUDGET_S": str(task.budgets.train_s)},
                stdin=fed, writable=[out], readable=[data.train] if fed is None else [],
                hidden=self._hidden(data), cancel=self.release, devices=self._gpus(),
                pids_max=self.pids_max, write_mb=self.write_mb,
            )
            runs.append(SeedRun(seed=seed, process=process, workspace=str(workspace), out=str(out)))
            if not process.ok:
                break  # one failed seed decides the label; the others would only cost time
        return runs

    def _gpus(self) -> bool:
        """Whether the running trial holds GPUs (the sandbox then binds the host's /dev)."""
        return bool(self.devices) and (self.pool is None or self.pool.kind != "cpu")

    def _hidden(self, data: TaskData) -> list[Path]:
        hidden = [data.root]
        if self.ledger.kind == "sqlite":
            hidden += hiding_sqlite(Path(self.ledger.url.path))
        return hidden

    def _evaluate(self, loaded: _Loaded, runs: list[SeedRun], root: Path) -> Evaluation | str:
        task, data = loaded.task, loaded.data
        scratch = root / "scratch"
        scratch.mkdir(exist_ok=True)
        hidden = self._hidden(data)

        def run(argv: Sequence[str], *, cwd: Path, timeout_s: float, stdin: bytes | None = None,
                env: dict[str, str] | None = None, readable: Sequence[Path] = (),
                writable: Sequence[Path] | None = None) -> Process:
            return run_process(
                argv, cwd=cwd, timeout_s=timeout_s, memory_mb=task.budgets.memory_mb,
                threads=task.budgets.threads, env={**self.env, **(env or {})}, stdin=stdin,
                writable=[scratch] if writable is None else list(writable),
                readable=[data.train, task.folder, *readable],
                hidden=hidden, devices=self._gpus(), pids_max=self.pids_max,
                write_mb=self.write_mb, writable_cwd=False,
            )

        ctx = EvalContext(task=task, runs=runs, heldout=data.heldout, train_data=data.train,
                          run=run, scratch=scratch)
        try:
            evaluation = loaded.evaluator.evaluate(ctx)
        except Exception as e:  # the recipe's outputs were unusable, or the evaluator is wrong
            return f"evaluation failed: {type(e).__name__}: {e}"
        if not isinstance(evaluation, Evaluation):
            return f"evaluator returned {type(evaluation).__name__}, not an Evaluation"
        return evaluation

    def _judge(self, loaded: _Loaded, proposed: ev.TrialProposed, program: Program,
               runs: list[SeedRun], evaluation: Evaluation, root: Path
               ) -> Decision:
        task = loaded.task
        self._interrupted = False

        def confirm() -> tuple[Evaluation, list[int]] | str:
            extra = self._run_seeds(loaded, program, task.confirm_seeds, root / "confirm")
            if self._shutting_down(extra):
                self._interrupted = True
                return "the worker shut down during confirmation"
            failed = label_runs(extra, memory_mb=task.budgets.memory_mb, wallclock_s=task.budgets.wallclock_s,
                                pids_max=self.pids_max, write_mb=self.write_mb)
            if failed is not None:
                return failed[1]
            reached = self._reached_out(extra)  # never evaluate through what a confirmation run made
            if reached is not None:
                return reached
            combined = self._evaluate(loaded, runs + extra, root / "confirm")
            return combined if isinstance(combined, str) else (combined, [r.seed for r in runs + extra])

        def best_now() -> Best | None:
            state = self._after_baseline(proposed.search_id)
            search = state.searches[proposed.search_id]
            if search.best_score is None:
                return None
            row = state.trials.get(search.best_trial or "")
            return Best(score=search.best_score, trial_id=search.best_trial,
                        seeds=dict(row.seed_scores) if row is not None else {})

        search = self._after_baseline(proposed.search_id).searches[proposed.search_id] \
            if not _is_baseline(proposed) else None
        floor = Floor(value=search.noise_floor, source=search.floor_source) if search is not None else None
        measure = SearchConfig.of(self._search_started(proposed.search_id)).baseline_seeds is not None
        return decide(task, evaluation, baseline=_is_baseline(proposed), best_now=best_now, confirm=confirm,
                      floor=floor, measure_floor=measure)

    def _after_baseline(self, search_id: str, limit_s: float = 3600.0) -> State:
        """The state once the search's baseline is labelled: trials proposed while it ran
        are judged against it, never against an empty search. It waits only while the
        baseline runs somewhere: one back in the queue may need this very worker. (Heartbeats
        keep this trial's lease meanwhile.)"""
        deadline = time.monotonic() + limit_s
        state = self.projector.catch_up()
        base = state.baseline_of(search_id)
        while (base is not None and base.label is None and base.status in ("claimed", "finished", "evaluated")
               and time.monotonic() < deadline and not self.release.is_set()):
            self.ledger.wait(state.position, 1.0)
            state = self.projector.catch_up()
            base = state.baseline_of(search_id)
        return state

    def _deltas(self, proposed: ev.TrialProposed, score: float | None) -> tuple[float | None, float | None]:
        if score is None:
            return None, None
        state = self.projector.state
        parent = state.trials.get(proposed.parents[0]) if proposed.parents else None
        best = state.searches[proposed.search_id].best_score
        return (
            score - parent.score if parent is not None and parent.score is not None else None,
            score - best if best is not None else None,
        )

    def _keep_artifacts(self, runs: list[SeedRun]) -> dict[str, str]:
        """Regular files of each ARL_OUT, read without following links (the recipe's processes
        are gone by now: nothing changes them under the reader)."""
        kept: dict[str, str] = {}
        budget = ARTIFACT_BYTES
        for run in runs:
            out = Path(run.out)
            for rel, size in output_files(out):
                if size > budget:
                    continue
                try:
                    data = read_bytes(out, rel)
                except OutputError:
                    continue  # not a regular file after all: never stored; _reached_out names it
                budget -= len(data)
                kept[f"seed{run.seed}/{rel}"] = self.ledger.put_blob(data)
        return kept

    @staticmethod
    def _reached_out(runs: list[SeedRun]) -> str | None:
        """Why the trial fails if a run left a link, pipe, socket or device in its outputs or
        workspace (the evaluator would read it from outside the sandbox), else None."""
        for run in runs:
            found = outputs_check({"ARL_OUT": Path(run.out), "workspace": Path(run.workspace)})
            if not found.passed:
                return f"seed {run.seed}: check outputs failed: {found.detail}"
        return None


def _is_baseline(proposed: ev.TrialProposed) -> bool:
    return proposed.agent == BASELINE_AGENT and not proposed.parents
