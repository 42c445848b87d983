"""The trial worker: follow the log, claim a submitted trial, run it, judge it, record it.

One trial, in order (each step's events are appended at the next stream
version, so a worker that lost its lease cannot record anything more):

1. claim (``TrialClaimed``, with a lease long enough for every run);
2. preflight without running: duplicate program, protected files changed,
   syntax, projected size — labelled at once;
3. run the recipe once per seed under budgets (``runners.sandbox``) and record
   ``RunFinished``;
4. the task's evaluator scores the runs and checks legality;
5. a candidate keep that needs it is confirmed on the task's confirmation seeds;
6. ``TrialEvaluated`` and ``TrialLabeled`` in one write.

Trials whose lease ran out (their worker died) get ``LeaseExpired`` and go back
to the queue; after ``max_attempts`` they are labelled ``infra_error``.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from agents.edits import program_problems
from ledger import events as ev
from ledger.errors import ArlError, ConflictError
from ledger.events import Label
from ledger.programs import Program, get_program, read_folder, write_folder
from ledger.projections import Projector, State, better
from ledger.store import Ledger, hostname
from ledger.trials import claim
from runners.labels import label_evaluation, label_runs
from runners.sandbox import hiding_sqlite, run_process
from runners.submit import task_of
from tasks.code import Evaluator, TaskData, load_evaluator, prepare_data
from tasks.evaluation import EvalContext, Evaluation, Process, SeedRun
from tasks.adapters import gpu_env
from tasks.manifest import Task

#: Artifacts kept in the blob store per trial (bigger outputs are named, not kept).
ARTIFACT_BYTES = 64 * 1024 * 1024
#: stdout/stderr kept inside RunFinished itself (the full tails go to the log blob).
EVENT_TAIL = 2000


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
        work_dir: Path | None = None,
        poll_s: float = 0.5,
    ) -> None:
        self.ledger = ledger
        self.name = name or f"{hostname()}:{id(self) & 0xFFFF:04x}"
        self.max_attempts = max_attempts
        self.lease_s = lease_s
        #: Seconds between lease renewals while a trial runs (None: no heartbeats).
        self.heartbeat_s = heartbeat_s
        #: The accelerators of this slot; recipes see only these (CUDA_VISIBLE_DEVICES).
        self.devices = list(devices or [])
        self.env = gpu_env(self.devices) if self.devices else {}
        #: Set to give back the running trial at once (SIGTERM): its recipe is killed.
        self.release = threading.Event()
        self.work_dir = work_dir
        self.poll_s = poll_s
        self.projector = Projector(ledger, name=f"worker/{self.name}", checkpoint_s=30.0)
        self._tasks: dict[str, _Loaded] = {}
        self._started: dict[str, ev.SearchStarted] = {}
        self._programs: dict[str, Program] = {}
        self._stop = threading.Event()

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
        for trial in list(state.queue):
            if not self._fits(trial):
                continue  # it needs another number of GPUs than this slot has
            try:
                claimed = claim(self.ledger, trial, self.name, lease_s=self._lease_for(trial))
            except ConflictError:
                continue  # another worker took it; try the next one
            self.execute(trial, claimed)
            return True
        return False

    def _task_of(self, trial: str) -> Task | None:
        """The task of a queued trial's search; None when it cannot be loaded (execute says why)."""
        try:
            return self._load(self.projector.state.trials[trial].search_id).task
        except ArlError:
            return None

    def _fits(self, trial: str) -> bool:
        task = self._task_of(trial)
        return task is None or task.needs.gpus in (0, len(self.devices))

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
        """Give back trials whose runner went silent past its lease; returns how many."""
        expired_count = 0
        now = datetime.now(UTC)
        for row in list(self.projector.state.trials.values()):
            if row.status not in ("claimed", "finished") or row.claimed_at is None:
                continue
            deadline = row.claimed_at.timestamp() + row.lease_s
            beat = self.ledger.lease_expiry(row.trial_id, row.runner or "")
            if max(deadline, beat or 0.0) >= now.timestamp():
                continue
            expired = ev.LeaseExpired(
                originator_id=row.trial_id, originator_version=row.version + 1,
                search_id=row.search_id, runner=row.runner or "", attempt=row.attempts,
                reason=f"no result from {row.runner} within its {row.lease_s:.0f} s lease",
            )
            events: list[ev.Event] = [expired]
            if row.attempts >= self.max_attempts:
                events.append(ev.TrialLabeled(
                    originator_id=row.trial_id, originator_version=row.version + 2,
                    search_id=row.search_id, label=Label.INFRA_ERROR,
                    reason=f"runner lost {row.attempts} time(s) "
                           f"(last: {row.runner}); not retried again",
                ))
            try:
                self.ledger.append(*events)
            except ConflictError:
                continue  # the runner was alive after all, or another worker expired it
            expired_count += 1
        return expired_count

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
        lease = claimed.lease_s
        while True:
            try:
                self.ledger.renew_lease(trial, self.name, time.time() + lease)
            except ArlError:
                pass  # a missed beat only shortens the lease; the next one may get through
            if done.wait(self.heartbeat_s):
                return

    def _execute(self, trial: str, claimed: ev.TrialClaimed) -> None:
        events = self.ledger.stream(trial)
        proposed = next(e for e in events if isinstance(e, ev.TrialProposed))
        submitted = [e for e in events if isinstance(e, ev.TrialSubmitted)][-1]
        record = _Recorder(self.ledger, trial, claimed)
        try:
            loaded = self._load(proposed.search_id)
            program = get_program(self.ledger, submitted.program_digest)
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
            if any(r.process.killed_for == "cancelled" for r in runs):
                record.released(self.name)
                return
            record.run_finished(self.name, runs, self._keep_artifacts(runs))
            failed = label_runs(runs, memory_mb=loaded.task.budgets.memory_mb,
                                wallclock_s=loaded.task.budgets.wallclock_s)
            if failed is not None:
                record.label(*failed)
                return
            evaluation = self._evaluate(loaded, runs, root)
            if isinstance(evaluation, str):
                record.label(Label.CRASH, evaluation)
                return
            label, reason, evaluation = self._judge(loaded, proposed, program, runs, evaluation, root)
        record.evaluated_and_labeled(loaded.evaluator, evaluation, label, reason,
                                     self._deltas(proposed, evaluation.score), loaded.data_digest)

    def _search_started(self, search_id: str) -> ev.SearchStarted:
        if search_id not in self._started:
            self._started[search_id] = self.ledger.stream(search_id)[0]
        return self._started[search_id]

    def _load(self, search_id: str) -> _Loaded:
        key = search_id
        if key not in self._tasks:
            task = task_of(self._search_started(search_id), need_recipe=False)
            data = prepare_data(task)
            self._tasks[key] = _Loaded(task, load_evaluator(task), data, data.digest())
        return self._tasks[key]

    def _preflight(self, task: Task, proposed: ev.TrialProposed, submitted: ev.TrialSubmitted,
                   program: Program) -> tuple[Label, str] | None:
        state = self.projector.state
        for other in state.trials.values():
            if (other.search_id == proposed.search_id and other.seq < proposed.seq
                    and other.program_digest == submitted.program_digest):
                return Label.DUPLICATE, f"same program as trial {other.seq} ({other.trial_id[:8]})"
        problems = program_problems(task, program, self._protected_reference(task, proposed))
        if problems:
            _check, label, detail = problems[0]
            return label, detail
        return None

    def _protected_reference(self, task: Task, proposed: ev.TrialProposed) -> Program:
        """What protected files must equal: the search's baseline program (the task's recipe
        for the baseline itself), so a worker needs no checkout of an adapter task."""
        if proposed.seq > 0:
            baseline = self.projector.state.trials.get(ev.trial_id(proposed.search_id, 0))
            if baseline is not None and baseline.program_digest:
                if baseline.program_digest not in self._programs:
                    self._programs[baseline.program_digest] = get_program(self.ledger, baseline.program_digest)
                return self._programs[baseline.program_digest]
        return read_folder(task.recipe_dir) if task.recipe_dir.is_dir() else {}

    def _run_seeds(self, loaded: _Loaded, program: Program, seeds: Sequence[int], root: Path) -> list[SeedRun]:
        task, data = loaded.task, loaded.data
        runs: list[SeedRun] = []
        for seed in seeds:
            workspace, out = root / f"seed{seed}" / "program", root / f"seed{seed}" / "out"
            workspace.mkdir(parents=True)
            out.mkdir()
            write_folder(program, workspace)
            process = run_process(
                task.run.command, cwd=workspace, timeout_s=task.budgets.wallclock_s,
                memory_mb=task.budgets.memory_mb, threads=task.budgets.threads,
                env={**self.env, "ARL_DATA": str(data.train), "ARL_OUT": str(out),
                     "ARL_SEED": str(seed), "ARL_TRAIN_BUDGET_S": str(task.budgets.train_s)},
                writable=[out], readable=[data.train], hidden=self._hidden(data),
                cancel=self.release, devices=bool(self.devices),
            )
            runs.append(SeedRun(seed=seed, process=process, workspace=str(workspace), out=str(out)))
            if not process.ok:
                break  # one failed seed decides the label; the others would only cost time
        return runs

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
                writable: Sequence[Path] = ()) -> Process:
            return run_process(
                argv, cwd=cwd, timeout_s=timeout_s, memory_mb=task.budgets.memory_mb,
                threads=task.budgets.threads, env={**self.env, **(env or {})}, stdin=stdin,
                writable=[scratch, *writable], readable=[data.train, task.folder, *readable],
                hidden=hidden, devices=bool(self.devices),
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
               ) -> tuple[Label, str, Evaluation]:
        task = loaded.task
        illegal = label_evaluation(evaluation)
        if illegal is not None:
            return illegal[0], illegal[1], evaluation
        if proposed.seq == 0:
            return Label.BASELINE, "the search's starting program", evaluation
        score = evaluation.score
        state = self._after_baseline(proposed.search_id)
        best = state.searches[proposed.search_id].best_score
        direction = task.objective.direction
        if best is None:
            return Label.KEEP, f"{score:.6g}: the search's first legal score", evaluation
        if not better(direction, score, best):
            return Label.DISCARD, f"{score:.6g} is not better than the best {best:.6g}", evaluation
        margin = abs(score - best)
        needs_confirmation = task.confirm == "always" or margin <= task.objective.noise_floor
        if not needs_confirmation:
            return Label.KEEP, f"{score:.6g} beats the best {best:.6g} by {margin:.3g}", evaluation
        if not task.confirm_seeds:
            return Label.DISCARD, (
                f"{score:.6g} beats the best by {margin:.3g}, within the noise floor "
                f"{task.objective.noise_floor:g}, and the task has no confirmation seeds"
            ), evaluation
        extra = self._run_seeds(loaded, program, task.confirm_seeds, root / "confirm")
        failed = label_runs(extra, memory_mb=task.budgets.memory_mb, wallclock_s=task.budgets.wallclock_s)
        if failed is not None:
            return Label.DISCARD, f"not confirmed: {failed[1]}", evaluation
        combined = self._evaluate(loaded, runs + extra, root / "confirm")
        if isinstance(combined, str):
            return Label.DISCARD, f"not confirmed: {combined}", evaluation
        illegal = label_evaluation(combined)
        if illegal is not None:
            return illegal[0], f"on confirmation seeds {task.confirm_seeds}: {illegal[1]}", combined
        if not better(direction, combined.score, best):
            return Label.DISCARD, (
                f"not confirmed: {combined.score:.6g} over seeds "
                f"{[r.seed for r in runs + extra]} is not better than the best {best:.6g}"
            ), combined
        return Label.KEEP, (
            f"{combined.score:.6g} over {len(runs + extra)} seeds beats the best {best:.6g} "
            "(confirmed on unseen seeds)"
        ), combined

    def _after_baseline(self, search_id: str, limit_s: float = 3600.0) -> State:
        """The state once the search's baseline is labelled: trials proposed while it ran
        are judged against it, never against an empty search. It waits only while the
        baseline runs somewhere: one back in the queue may need this very worker. (Heartbeats
        keep this trial's lease meanwhile.)"""
        deadline = time.monotonic() + limit_s
        state = self.projector.catch_up()
        base = state.trials.get(ev.trial_id(search_id, 0))
        while (base is not None and base.label is None and base.status in ("claimed", "finished", "evaluated")
               and time.monotonic() < deadline):
            self.ledger.wait(state.position, 1.0)
            state = self.projector.catch_up()
            base = state.trials.get(ev.trial_id(search_id, 0))
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
        kept: dict[str, str] = {}
        budget = ARTIFACT_BYTES
        for run in runs:
            out = Path(run.out)
            for path in sorted(p for p in out.rglob("*") if p.is_file()):
                size = path.stat().st_size
                if size > budget:
                    continue
                budget -= size
                kept[f"seed{run.seed}/{path.relative_to(out).as_posix()}"] = self.ledger.put_blob(path.read_bytes())
        return kept


class StaleLease(Exception):
    """This runner's lease on a trial was taken over while it worked."""


class _Recorder:
    """Appends a trial's events at consecutive versions after the claim."""

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

    def released(self, runner: str) -> None:
        """Give the trial back without a result (the runner is shutting down)."""
        self._append(ev.LeaseExpired(
            originator_id=self.trial, originator_version=self.version + 1, search_id=self.search,
            runner=runner, attempt=self.attempt, reason=f"released by {runner}: shutting down",
        ))

    def label(self, label: Label, reason: str, score: float | None = None) -> None:
        self._append(ev.TrialLabeled(originator_id=self.trial, originator_version=self.version + 1,
                                     search_id=self.search, label=label, reason=reason, score=score))

    def run_finished(self, runner: str, runs: list[SeedRun], artifacts: dict[str, str]) -> None:
        last = runs[-1].process
        failing = next((r.process for r in runs if not r.process.ok), last)
        log = json.dumps({str(r.seed): msgspec.to_builtins(r.process) for r in runs}, indent=1)
        self._append(ev.RunFinished(
            originator_id=self.trial, originator_version=self.version + 1, search_id=self.search,
            runner=runner, exit_code=failing.exit_code, signal=failing.signal,
            wall_s=sum(r.process.wall_s for r in runs), cpu_s=sum(r.process.cpu_s for r in runs),
            peak_rss_mb=max(r.process.peak_rss_mb for r in runs),
            timed_out="train" if failing.killed_for == "wallclock" else None,
            stdout_tail=failing.stdout_tail[-EVENT_TAIL:], stderr_tail=failing.stderr_tail[-EVENT_TAIL:],
            artifacts=artifacts, log_digest=self.ledger.put_blob(log.encode()),
            sandbox=failing.sandbox, started_at=runs[0].process.started_at,
        ))

    def evaluated_and_labeled(self, evaluator: Evaluator, evaluation: Evaluation, label: Label,
                              reason: str, deltas: tuple[float | None, float | None],
                              data_digest: str) -> None:
        metrics = {k: float(v) for k, v in evaluation.metrics.items()}
        self._append(
            ev.TrialEvaluated(
                originator_id=self.trial, originator_version=self.version + 1, search_id=self.search,
                evaluator=evaluator.name, evaluator_version=f"{evaluator.version}+{evaluator.digest[:12]}",
                score=evaluation.score, metrics=metrics, checks=tuple(evaluation.checks),
                seeds=tuple(sorted({*evaluation.per_seed} or ())), data_digest=data_digest,
            ),
            ev.TrialLabeled(
                originator_id=self.trial, originator_version=self.version + 2, search_id=self.search,
                label=label, score=evaluation.score, improvement=label is Label.KEEP,
                delta_vs_parent=deltas[0], delta_vs_best=deltas[1], reason=reason,
            ),
        )
