"""airbench96 evaluator: wallclock timed from outside, gated on mean test accuracy over the seeds.

Score: the mean over seeds of the whole training process's wallclock as the worker
timed it (start-up and compilation included: a faster start is a faster run).
Accuracy: per run, read by what airbench96_faster.py prints — a table under the
header ``|  run  |  epoch  | … |  tta_val_acc  |  total_time_seconds  |``: one row per
epoch (the run number only in a run's first row), then one row whose epoch is
``eval`` holding the test-time-augmented accuracy and the run's time, then
``Mean: X    Std: Y`` over the runs. The accuracy is the mean ``tta_val_acc`` of the
``eval`` rows (one per run; arl adapts the recipe to one run per seed), else the
``Mean:`` line; legal only if the mean over at least ``gates.accuracy_seeds`` runs
reaches ``gates.accuracy``. The recipe's own ``total_time_seconds`` (CUDA events,
compilation excluded) is reported, never scored, except by ``arl evaluate``, where
nothing was timed and it is all there is.

A log that cannot be read so is a crash with the reason, never an accuracy: a run
that started (its numbered row) and printed no ``eval`` row (stopped during
training), more ``eval`` rows than runs, a ``Mean:`` that is not the mean of the
``eval`` rows, a cell that is not a number. A ``nan`` accuracy is ``diverged``. A row
repeated verbatim on the next line (two writers of one stream) is counted once.
"""

from __future__ import annotations

import math
import re

import msgspec

from arl.tasks.adapters import RecordedRun, declared_checks, run_log
from arl.tasks.evaluation import Check, EvalContext, Evaluation, Label

VERSION = "2"

_MEAN = re.compile(r"^Mean:\s*(?P<acc>\S+)", re.M)
#: Mean and tta_val_acc are printed to 4 decimals.
ROUNDING = 1e-4 + 1e-9


class BenchLog(msgspec.Struct, kw_only=True):
    accuracy: float | None = None
    recipe_time_s: float | None = None
    #: Why the log has no accuracy (empty when it has one, or has no table at all).
    problem: str = ""
    runs: int = 0


def read_log(text: str) -> BenchLog:
    log = BenchLog()
    header: list[str] = []
    started = 0
    evals: list[tuple[float, float | None]] = []
    last_epoch = ""
    previous = None
    for line in text.splitlines():
        if not line.startswith("|"):
            continue
        if line == previous:
            continue  # the same row printed twice in a row
        previous = line
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if "tta_val_acc" in cells:
            header = cells
            continue
        if not header or len(cells) != len(header):
            continue
        row = dict(zip(header, cells))
        if row.get("run"):
            started += 1
        last_epoch = row.get("epoch", "")
        if last_epoch != "eval":
            continue
        try:
            acc = float(row["tta_val_acc"])
            seconds = float(row["total_time_seconds"]) if row.get("total_time_seconds") else None
        except (KeyError, ValueError):
            log.problem = (f"the eval row's tta_val_acc {row.get('tta_val_acc')!r} / total_time_seconds "
                           f"{row.get('total_time_seconds')!r} is not a number")
            return log
        evals.append((acc, seconds))
    log.runs = max(started, len(evals))
    means = _MEAN.findall(text)
    if started and len(evals) < started:
        log.problem = (f"run {started} started and printed no eval row (the table stops at epoch "
                       f"{last_epoch or '?'}): it stopped before its evaluation")
        return log
    if started and len(evals) > started:
        log.problem = f"{len(evals)} eval rows for {started} run(s): the log is damaged or runs interleave"
        return log
    if evals:
        accs = [a for a, _ in evals]
        log.accuracy = sum(accs) / len(accs)
        times = [t for _, t in evals if t is not None]
        log.recipe_time_s = sum(times) / len(times) if times else None
        if means and math.isfinite(log.accuracy):
            try:
                stated = float(means[-1])
            except ValueError:
                stated = math.nan
            if not abs(stated - log.accuracy) <= ROUNDING:
                log.problem = (f"Mean: {means[-1]} is not the mean of the {len(accs)} eval row(s) "
                               f"({log.accuracy:.4f}): the log is damaged")
                log.accuracy = None
        return log
    if means:
        try:
            log.accuracy = float(means[-1])
        except ValueError:
            log.problem = f"Mean: {means[-1]!r} is not a number"
    return log


def recorded_run(text: str) -> RecordedRun:
    """For ``arl evaluate``: the recipe's own training time, the only time a log holds."""
    return RecordedRun(wall_s=read_log(text).recipe_time_s)


def evaluate(ctx: EvalContext) -> Evaluation:
    task, budgets, gates = ctx.task, ctx.task.budgets, ctx.task.gates
    logs = [read_log(run_log(run.out, run.process.stdout_tail)) for run in ctx.runs]
    recorded = all(run.process.sandbox == "recorded" for run in ctx.runs)
    checks: list[Check] = []
    metrics: dict[str, float] = {}

    missing = [f"seed {run.seed}: " + (log.problem or "the log has no final eval row with tta_val_acc")
               for run, log in zip(ctx.runs, logs) if log.accuracy is None]
    checks.append(Check(name="final_metric", passed=not missing, fails_as=Label.CRASH,
                        detail="; ".join(missing) if missing else "tta_val_acc of the final eval row"))
    if missing:
        return Evaluation(score=None, metrics=metrics, checks=checks + declared_checks(task), per_seed={})
    accs = [log.accuracy for log in logs if log.accuracy is not None]
    checks.append(Check(name="finite", passed=all(math.isfinite(a) for a in accs), fails_as=Label.DIVERGED,
                        detail="tta_val_acc of every run is a number"))
    walls = [run.process.wall_s for run in ctx.runs]
    score = sum(walls) / len(walls)
    worst = max(walls)
    checks.append(Check(name="train_wall_s", passed=worst <= budgets.train_s, value=round(worst, 3),
                        limit=budgets.train_s, fails_as=Label.TRAIN_BUDGET_OVERRUN,
                        detail="not timed here: the recipe's own total_time_seconds from its log" if recorded
                        else "one training run, the whole process timed from outside (longest seed)"))
    accuracies = [log.accuracy for log in logs if log.accuracy is not None]
    if gates.accuracy is not None and accuracies:
        mean = sum(accuracies) / len(accuracies)
        enough = len(accuracies) >= gates.accuracy_seeds
        metrics["accuracy"] = mean
        checks.append(Check(
            name="accuracy", passed=enough and mean >= gates.accuracy, value=round(mean, 6), limit=gates.accuracy,
            fails_as=Label.GATE_MISS,
            detail=f"mean tta_val_acc over {len(accuracies)} seeds" + (
                "" if enough else f"; the gate needs at least {gates.accuracy_seeds} seeds"),
        ))
    per_seed: dict[int, float] = {}
    for seed in sorted({run.seed for run in ctx.runs}):
        values = [run.process.wall_s for run in ctx.runs if run.seed == seed]
        per_seed[seed] = sum(values) / len(values)
    times = [log.recipe_time_s for log in logs if log.recipe_time_s is not None]
    if times:
        metrics["recipe_time_s"] = sum(times) / len(times)
    metrics["train_wall_s"] = score
    checks += declared_checks(task)
    return Evaluation(score=None if missing else score, metrics=metrics, checks=checks, per_seed=per_seed, verified=False)  # read from the recipe's log
