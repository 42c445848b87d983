"""airbench96 evaluator: wallclock timed from outside, gated on mean test accuracy over the seeds.

Score: the mean over seeds of the whole training process's wallclock as the worker
timed it (start-up and compilation included: a faster start is a faster run).
Accuracy: per run, ``tta_val_acc`` of the final ``eval`` row of the recipe's table
(else its ``Mean: X`` line); legal only if the mean over at least
``gates.accuracy_seeds`` runs reaches ``gates.accuracy``. The recipe's own
``total_time_seconds`` (CUDA events, compilation excluded) is reported, never scored,
except by ``arl evaluate``, where nothing was timed and it is all there is.
"""

from __future__ import annotations

import re

import msgspec

from arl.tasks.adapters import RecordedRun, declared_checks, run_log
from arl.tasks.evaluation import Check, EvalContext, Evaluation, Label

VERSION = "1"

_MEAN = re.compile(r"^Mean:\s*(?P<acc>[0-9.]+)", re.M)


class BenchLog(msgspec.Struct, kw_only=True):
    accuracy: float | None = None
    recipe_time_s: float | None = None


def read_log(text: str) -> BenchLog:
    log = BenchLog()
    header: list[str] = []
    for line in text.splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if "tta_val_acc" in cells:
            header = cells
        elif header and len(cells) == len(header) and dict(zip(header, cells)).get("epoch") == "eval":
            row = dict(zip(header, cells))
            try:
                log.accuracy = float(row["tta_val_acc"])
                log.recipe_time_s = float(row["total_time_seconds"])
            except (KeyError, ValueError):
                continue
    if log.accuracy is None and (means := _MEAN.findall(text)):
        log.accuracy = float(means[-1])
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

    missing = [f"seed {run.seed}" for run, log in zip(ctx.runs, logs) if log.accuracy is None]
    checks.append(Check(name="final_metric", passed=not missing, fails_as=Label.CRASH,
                        detail=f"{', '.join(missing)}: the log has no final eval row with tta_val_acc"
                        if missing else "tta_val_acc of the final eval row"))
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
