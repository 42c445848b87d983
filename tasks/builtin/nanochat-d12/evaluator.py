"""nanochat-d12 evaluator: CORE of the final evaluation, the depth, and the run's time.

Per run, from its log (the launcher's ARL_OUT/run.log: base_train, then base_eval),
by what nanochat prints (scripts/base_train.py, scripts/base_eval.py):

* CORE: the ``CORE metric: X`` line base_eval prints after its ``CORE Evaluation``
  banner — the last one (the ``Step N | CORE metric`` lines of pretraining use a
  subsample of each task and never count). base_eval also writes the value with six
  decimals to ``base_eval/<model>.csv`` (row ``CORE``), which the launcher copies to
  ARL_OUT; when it is there and agrees with the log, it is the score's digits.
* each CORE task's line, ``Evaluating: LABEL (N-shot, type: T)... accuracy: A |
  centered: C | time: Ss``: CORE is the mean of the centered results, so the log's
  CORE must be that mean (to the printed rounding), and their times, summed, are
  the evaluation time;
* the depth: ``"n_layer": N`` in the logged ``Model config``; anything but 12 is an
  illegal edit, whatever code produced it;
* ``Total training time: Xm`` and ``Minimum validation bpb: X`` (reported).

A log that cannot be read so is a crash with the reason, never a score: the CORE
evaluation began but printed no CORE (stopped after K tasks), two different CORE
values, a CORE that is not the mean of its task lines, a CSV that contradicts the
log. ``CORE metric: nan`` is read and labelled ``diverged``. The whole run is timed
from outside by the worker (``process.wall_s``).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import msgspec

from arl.tasks.adapters import RecordedRun, declared_checks, run_log
from arl.tasks.evaluation import Check, EvalContext, Evaluation, Label

VERSION = "2"
DEPTH = 12

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|[-+]?inf"
_CORE = re.compile(rf"^CORE metric:\s*(?P<v>{_NUM})\s*$", re.M | re.I)
_BANNER = re.compile(r"^CORE Evaluation\s*$", re.M)
_LAYERS = re.compile(r'"n_layer":\s*(?P<n>\d+)')
_TASK = re.compile(rf"Evaluating: (?P<label>.+?) \(.*?\)\.\.\. accuracy: (?P<acc>{_NUM}) \| "
                   rf"centered: (?P<centered>{_NUM}) \| time: (?P<s>\d+(?:\.\d+)?)s\s*$", re.M)
_TASK_TIME = re.compile(r"\|\s*time:\s*(?P<s>\d+(?:\.\d+)?)s\s*$", re.M)
_TRAIN_MIN = re.compile(r"^Total training time:\s*(?P<m>\d+(?:\.\d+)?)m\s*$", re.M)
_MIN_BPB = re.compile(r"^Minimum validation bpb:\s*(?P<v>\d+(?:\.\d+)?)", re.M)
_CSV_CORE = re.compile(rf"^CORE\s*,\s*,\s*(?P<v>{_NUM})\s*$", re.M)
#: CORE and each centered result are printed to 4 decimals: the mean of the rounded
#: results and the rounded CORE can differ by this much and still be the same number.
ROUNDING = 1e-4 + 1e-9


class ChatLog(msgspec.Struct, kw_only=True):
    core: float | None = None
    #: Why the log has no score (empty when it has one, or has no evaluation at all).
    problem: str = ""
    #: CORE tasks the final evaluation printed.
    tasks: int = 0
    n_layer: int | None = None
    train_s: float | None = None
    eval_s: float | None = None
    min_val_bpb: float | None = None


def read_log(text: str, csv: str | None = None) -> ChatLog:
    log = ChatLog()
    banners = list(_BANNER.finditer(text))
    section = text[banners[-1].end():] if banners else text
    tasks = list(_TASK.finditer(section)) if banners else []
    log.tasks = len(tasks)
    cores = _CORE.findall(section)
    if layers := _LAYERS.findall(text):
        log.n_layer = int(layers[-1])
    if m := _TRAIN_MIN.findall(text):
        log.train_s = float(m[-1]) * 60
    if times := _TASK_TIME.findall(section):
        log.eval_s = sum(float(t) for t in times)
    if m := _MIN_BPB.findall(text):
        log.min_val_bpb = float(m[-1])
    if not cores:
        if banners:
            last = f" (last: {tasks[-1]['label']})" if tasks else ""
            log.problem = (f"the CORE evaluation began but printed no `CORE metric:` line; it stopped after "
                           f"{len(tasks)} task(s){last}")
        return log
    if len({float(c) for c in cores if c.lower() != "nan"}) > 1 or ("nan" in {c.lower() for c in cores}
                                                                   and len(set(cores)) > 1):
        log.problem = f"the CORE evaluation states different CORE values ({', '.join(cores)}): a damaged log"
        return log
    core = float(cores[-1])
    if tasks and math.isfinite(core):
        centered = [float(t["centered"]) for t in tasks]
        mean = sum(centered) / len(centered)
        if not abs(mean - core) <= ROUNDING:
            log.problem = (f"CORE metric {cores[-1]} is not the mean of its {len(tasks)} task lines' centered "
                           f"results ({mean:.4f}): lines are missing or damaged")
            return log
    if csv is not None and (m := _CSV_CORE.search(csv)) and math.isfinite(core):
        exact = float(m["v"])
        if abs(exact - core) > 0.5e-4 + 1e-9:
            log.problem = (f"base_eval's CSV states CORE {m['v']} but its log {cores[-1]}: they are not the same "
                           "evaluation")
            return log
        core = exact
    log.core = core
    return log


def _csv(out: str | Path) -> str | None:
    """base_eval's CSV, as the launcher copied it to ARL_OUT (one per model)."""
    found = sorted(Path(out).glob("*.csv"))
    return found[0].read_text(errors="replace") if len(found) == 1 else None


def recorded_run(text: str) -> RecordedRun:
    """For ``arl evaluate``: pretraining + CORE time as the log states them (nanochat logs no seed)."""
    log = read_log(text)
    wall = None if log.train_s is None else log.train_s + (log.eval_s or 0.0)
    return RecordedRun(wall_s=wall)


def evaluate(ctx: EvalContext) -> Evaluation:
    task, budgets = ctx.task, ctx.task.budgets
    logs = [read_log(run_log(run.out, run.process.stdout_tail), _csv(run.out)) for run in ctx.runs]
    recorded = all(run.process.sandbox == "recorded" for run in ctx.runs)
    checks: list[Check] = []
    metrics: dict[str, float] = {}

    missing = [f"seed {run.seed}: " + (log.problem or "the log has no final `CORE metric: X` line from base_eval")
               for run, log in zip(ctx.runs, logs) if log.core is None]
    checks.append(Check(name="final_metric", passed=not missing, fails_as=Label.CRASH,
                        detail="; ".join(missing) if missing else "base_eval's CORE metric"))
    if any(log.problem for log in logs):
        # A log that contradicts itself says nothing reliable about the depth or times either.
        return Evaluation(score=None, metrics=metrics, checks=checks + declared_checks(task), per_seed={})
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
