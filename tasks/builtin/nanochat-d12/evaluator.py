"""nanochat-d12 evaluator: CORE of the final evaluation, the depth, and the run's time.

Per run, from its log (the launcher's ARL_OUT/run.log: pretraining, then base_eval):

* CORE: the last ``CORE metric: X`` line of base_eval (the ``Step N | CORE metric``
  lines during pretraining use a subsample of each task and do not count);
* the depth: ``"n_layer": N`` in the logged ``Model config``; anything but 12 is an
  illegal edit, whatever code produced it;
* evaluation time: the ``time: Xs`` of every CORE task line, summed.

The whole run is timed from outside by the worker (``process.wall_s``).
"""

from __future__ import annotations

import math
import re

import msgspec

from arl.tasks.adapters import RecordedRun, declared_checks, run_log
from arl.tasks.evaluation import Check, EvalContext, Evaluation, Label

VERSION = "1"
DEPTH = 12

_CORE = re.compile(r"^CORE metric:\s*(?P<v>[-+0-9.eE]+|nan|inf)\s*$", re.M | re.I)
_LAYERS = re.compile(r'"n_layer":\s*(?P<n>\d+)')
_TASK_TIME = re.compile(r"\|\s*time:\s*(?P<s>\d+(?:\.\d+)?)s\s*$", re.M)
_TRAIN_MIN = re.compile(r"^Total training time:\s*(?P<m>\d+(?:\.\d+)?)m\s*$", re.M)
_MIN_BPB = re.compile(r"^Minimum validation bpb:\s*(?P<v>\d+(?:\.\d+)?)", re.M)


class ChatLog(msgspec.Struct, kw_only=True):
    core: float | None = None
    n_layer: int | None = None
    train_s: float | None = None
    eval_s: float | None = None
    min_val_bpb: float | None = None


def read_log(text: str) -> ChatLog:
    log = ChatLog()
    if cores := _CORE.findall(text):
        log.core = float(cores[-1])
    if layers := _LAYERS.findall(text):
        log.n_layer = int(layers[-1])
    if m := _TRAIN_MIN.findall(text):
        log.train_s = float(m[-1]) * 60
    if times := _TASK_TIME.findall(text):
        log.eval_s = sum(float(t) for t in times)
    if m := _MIN_BPB.findall(text):
        log.min_val_bpb = float(m[-1])
    return log


def recorded_run(text: str) -> RecordedRun:
    """For ``arl evaluate``: pretraining + CORE time as the log states them (nanochat logs no seed)."""
    log = read_log(text)
    wall = None if log.train_s is None else log.train_s + (log.eval_s or 0.0)
    return RecordedRun(wall_s=wall)


def evaluate(ctx: EvalContext) -> Evaluation:
    task, budgets = ctx.task, ctx.task.budgets
    logs = [read_log(run_log(run.out, run.process.stdout_tail)) for run in ctx.runs]
    recorded = all(run.process.sandbox == "recorded" for run in ctx.runs)
    checks: list[Check] = []
    metrics: dict[str, float] = {}

    missing = [f"seed {run.seed}" for run, log in zip(ctx.runs, logs) if log.core is None]
    checks.append(Check(name="final_metric", passed=not missing, fails_as=Label.CRASH,
                        detail=f"{', '.join(missing)}: the log has no final `CORE metric: X` line from base_eval"
                        if missing else "base_eval's CORE metric"))
    unknown = [f"seed {run.seed}" for run, log in zip(ctx.runs, logs) if log.n_layer is None]
    if unknown:
        checks.append(Check(name="depth", passed=False, limit=DEPTH, fails_as=Label.CRASH,
                            detail=f"{', '.join(unknown)}: the log shows no model config with n_layer"))
    else:
        seed, layers = next(((r.seed, g.n_layer) for r, g in zip(ctx.runs, logs) if g.n_layer != DEPTH),
                            (ctx.runs[0].seed, DEPTH))
        checks.append(Check(name="depth", passed=layers == DEPTH, value=float(layers), limit=float(DEPTH),
                            fails_as=Label.ILLEGAL_EDIT,
                            detail=f"seed {seed}: the model trained with n_layer {layers}; the task fixes it at {DEPTH}"
                            if layers != DEPTH else "n_layer in the logged model config"))

    wall = max(run.process.wall_s for run in ctx.runs)
    checks.append(Check(name="run_s", passed=wall <= budgets.train_s, value=round(wall, 3), limit=budgets.train_s,
                        fails_as=Label.TRAIN_BUDGET_OVERRUN,
                        detail="not timed here: pretraining + CORE time as the log states them" if recorded
                        else "pretraining + CORE evaluation, the whole process timed from outside"))
    evals = [g.eval_s for g in logs if g.eval_s is not None]
    if evals:
        checks.append(Check(name="eval_s", passed=max(evals) <= budgets.eval_s, value=round(max(evals), 3),
                            limit=budgets.eval_s, fails_as=Label.EVAL_BUDGET_OVERRUN,
                            detail="CORE task times in the log, summed"))

    per_seed: dict[int, float] = {}
    for seed in sorted({run.seed for run in ctx.runs}):
        values = [g.core for r, g in zip(ctx.runs, logs) if r.seed == seed and g.core is not None]
        if values:
            per_seed[seed] = sum(values) / len(values)
    score = None
    if not missing:
        score = sum(g.core for g in logs) / len(logs)
        metrics["core"] = score
        checks.append(Check(name="finite", passed=math.isfinite(score), value=score, fails_as=Label.DIVERGED))
    for name, values in (("train_s", [g.train_s for g in logs]), ("min_val_bpb", [g.min_val_bpb for g in logs])):
        known = [v for v in values if v is not None]
        if known:
            metrics[name] = max(known)
    checks += declared_checks(task)
    return Evaluation(score=score, metrics=metrics, checks=checks, per_seed=per_seed, verified=False)  # read from the recipe's log
