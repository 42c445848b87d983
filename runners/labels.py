"""From what happened to one label, with a reason a person (or an agent) can act on.

Three steps, in the order a trial meets them: :func:`label_runs` (did every
training run finish: oom, overrun, crash), :func:`label_evaluation` (did the
evaluation pass its checks and give a finite score), and :func:`decide` — the
keep / discard / confirm policy that compares a legal score with the best.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

import msgspec

from arl.ledger.events import Check, Evidence, Label
from arl.ledger.projections import better
from arl.runners.evidence import compare, spread
from arl.tasks.evaluation import Evaluation, SeedRun
from arl.tasks.manifest import Task

#: When several checks fail, the label of the most fundamental failure wins.
_CHECK_PRIORITY = (
    Label.ILLEGAL_EDIT,  # e.g. a logged model depth the task pins: worse than any overrun
    Label.DIVERGED,
    Label.TRAIN_BUDGET_OVERRUN,
    Label.EVAL_BUDGET_OVERRUN,
    Label.SIZE_VIOLATION,
    Label.GATE_MISS,
)

_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b.*$", re.M)


def exception_excerpt(stderr: str, limit: int = 300) -> str:
    """The last exception line of a traceback (plus where it was raised), else the last line."""
    matches = list(_EXCEPTION_LINE.finditer(stderr))
    if matches:
        last = matches[-1]
        before = stderr[: last.start()].rstrip().splitlines()
        where = next((ln.strip() for ln in reversed(before) if ln.strip().startswith("File ")), "")
        text = last.group(0).strip() + (f" ({where})" if where else "")
    else:
        lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
        text = lines[-1].strip() if lines else "no output on stderr"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def label_runs(runs: Sequence[SeedRun], *, memory_mb: int, wallclock_s: float,
               pids_max: int | None = None, write_mb: float | None = None) -> tuple[Label, str] | None:
    """A label if any training run failed to finish cleanly, else None."""
    for run in runs:
        p = run.process
        # Paths inside the throwaway workspace say nothing; keep reasons stable across runs.
        p = msgspec.structs.replace(p, stderr_tail=p.stderr_tail.replace(run.workspace + "/", ""))
        if p.killed_for == "memory" or "MemoryError" in p.stderr_tail or "out of memory" in p.stderr_tail.lower():
            return Label.OOM, (
                f"seed {run.seed}: peak memory {p.peak_rss_mb:.0f} MB over the {memory_mb} MB limit"
                if p.killed_for == "memory" else f"seed {run.seed}: {exception_excerpt(p.stderr_tail)}"
            )
        if p.killed_for == "processes":
            return Label.OOM, f"seed {run.seed}: more than {pids_max} processes at once; killed"
        if p.killed_for == "disk":
            return Label.SIZE_VIOLATION, (
                f"seed {run.seed}: wrote more than {write_mb:g} MB (workspace, ARL_OUT, stdout and stderr); killed")
        if p.killed_for == "wallclock":
            return Label.TRAIN_BUDGET_OVERRUN, (
                f"seed {run.seed}: still running at the {wallclock_s:.0f} s hard limit; killed"
            )
        if p.exit_code != 0:
            how = f"exit code {p.exit_code}" if p.exit_code is not None else f"signal {p.signal}"
            return Label.CRASH, f"seed {run.seed}: {how}: {exception_excerpt(p.stderr_tail)}"
    return None


def describe_check(check: Check) -> str:
    if check.value is None or check.limit is None:
        return f"check {check.name} failed" + (f": {check.detail}" if check.detail else "")
    over = check.value - check.limit
    text = (
        f"check {check.name} failed: {check.value:.6g} vs limit {check.limit:.6g} "
        f"({'over' if over > 0 else 'under'} by {abs(over):.3g})"
    )
    return text + (f"; {check.detail}" if check.detail else "")


def label_evaluation(evaluation: Evaluation) -> tuple[Label, str] | None:
    """A label if the evaluation shows an illegal or broken result, else None."""
    failed = evaluation.failed
    if failed:
        rank = {label: i for i, label in enumerate(_CHECK_PRIORITY)}
        worst = min(failed, key=lambda c: rank.get(c.fails_as, len(rank)))
        return worst.fails_as, describe_check(worst)
    if evaluation.score is None:
        return Label.CRASH, "the evaluator produced no score"
    if not math.isfinite(evaluation.score):
        return Label.DIVERGED, f"score is {evaluation.score}"
    return None


#: Re-runs a candidate on the task's confirmation seeds: the evaluation over every
#: seed and the seeds it covers, or why it could not be confirmed (a failed run, an
#: evaluator error).
Confirm = Callable[[], "tuple[Evaluation, list[int]] | str"]


class Best(msgspec.Struct, frozen=True, kw_only=True):
    """The best at label time: what a candidate is compared with."""

    score: float
    trial_id: str | None = None
    #: Its per-seed scores where recorded (older trials: none; its score then stands alone).
    seeds: dict[int, float] = {}


class Floor(msgspec.Struct, frozen=True, kw_only=True):
    """The noise floor a search judges by, and where it came from."""

    value: float
    source: str = "manifest"  # or "measured" (``--baseline-seeds``)


Decision = tuple[Label, str, Evaluation, Evidence | None]


def decide(task: Task, evaluation: Evaluation, *, baseline: bool, best_now: Callable[[], Best | None],
           confirm: Confirm, floor: Floor | None = None, measure_floor: bool = False) -> Decision:
    """The label of an evaluated trial, its reason, the evaluation it stands on, and its evidence.

    Illegal or broken results are labelled by their worst failure (no evidence). A
    legal score is a keep when it beats the best at label time (``best_now()``, asked
    only for a legal score that is not the baseline's) by more than the noise floor
    (``floor``: the search's, else the task's); one within the floor (every one, for
    ``confirm = "always"``) is re-run on the confirmation seeds first and kept only if
    the mean over all seeds still beats the best. The evidence records the per-seed
    scores on both sides, the rule that decided, and Welch's t or a bootstrap
    interval of the gain (:mod:`arl.runners.evidence`). With ``measure_floor`` (a search
    started with ``--baseline-seeds``) the baseline's seeds measure the search's floor.
    """
    floor = floor or Floor(value=task.objective.noise_floor)
    illegal = label_evaluation(evaluation)
    if illegal is not None:
        return illegal[0], illegal[1], evaluation, None
    direction = task.objective.direction
    if baseline:
        return Label.BASELINE, "the search's starting program", _on_task_seeds(task, evaluation), \
            baseline_evidence(task, evaluation, measure=measure_floor)
    score = evaluation.score
    best = best_now()

    def evidence(rule: str, on: Evaluation, confirmed: bool = False, against: float | None = None,
                 screened: float | None = None) -> Evidence:
        seeds = dict(on.per_seed) or {0: on.score}
        if best is None:
            return Evidence(rule=rule, seeds=seeds, noise_floor=floor.value, floor_source=floor.source)
        reference = dict(best.seeds) or {}
        result = compare(list(seeds.values()), list(reference.values()) or [best.score], direction)
        return Evidence(
            rule=rule, seeds=seeds, best_trial=best.trial_id, best=best.score, best_seeds=reference,
            gain=gain(direction, on.score, best.score if against is None else against),
            screen_gain=screened, noise_floor=floor.value, floor_source=floor.source,
            confirmed=confirmed, test=result.test, statistic=result.statistic, p_value=result.p_value,
            interval=result.interval,
        )

    if best is None:
        return Label.KEEP, f"{score:.6g}: the search's first legal score", evaluation, evidence(
            "the search's first legal score is kept", evaluation)
    if not better(direction, score, best.score):
        return Label.DISCARD, f"{score:.6g} is not better than the best {best.score:.6g}", evaluation, evidence(
            "not better than the best: discarded without re-runs", evaluation)
    margin = abs(score - best.score)
    if task.confirm != "always" and margin > floor.value:
        return Label.KEEP, f"{score:.6g} beats the best {best.score:.6g} by {margin:.3g}", evaluation, evidence(
            f"gain {margin:.3g} > noise floor {floor.value:g} ({floor.source}): kept without re-runs", evaluation)
    within = (f"gain {margin:.3g} <= noise floor {floor.value:g} ({floor.source})"
              if margin <= floor.value else "the task confirms every candidate")
    if not task.confirm_seeds:
        return Label.DISCARD, (
            f"{score:.6g} beats the best by {margin:.3g}, within the noise floor "
            f"{floor.value:g}, and the task has no confirmation seeds"
        ), evaluation, evidence(f"{within}, no confirmation seeds: discarded", evaluation)
    screened = gain(direction, score, best.score)  # the gain that sent it to re-runs
    confirmed = confirm()
    if isinstance(confirmed, str):
        return Label.DISCARD, f"not confirmed: {confirmed}", evaluation, evidence(
            f"{within}; the re-runs failed: discarded", evaluation, screened=screened)
    combined, all_seeds = confirmed
    illegal = label_evaluation(combined)
    if illegal is not None:
        return illegal[0], f"on confirmation seeds {task.confirm_seeds}: {illegal[1]}", combined, None
    # Compared seed for seed where the best was measured on every one of them (a baseline
    # measured with --baseline-seeds): seeds differ more than candidates do on a
    # deterministic task, and a mean over other seeds would decide instead of the edit.
    reference, over, named = best.score, "the best", f"the best {best.score:.6g}"
    if best.seeds and all(s in best.seeds for s in all_seeds):
        reference = math.fsum(best.seeds[s] for s in all_seeds) / len(all_seeds)
        over = named = f"the best's {reference:.6g} on the same seeds"
    rule = (f"{within}; re-run on seeds {task.confirm_seeds}: kept if the mean over {len(all_seeds)} seeds "
            f"beats {over}")
    if not better(direction, combined.score, reference):
        return Label.DISCARD, (
            f"not confirmed: {combined.score:.6g} over seeds {list(all_seeds)} is not better than {named}"
        ), combined, evidence(rule, combined, against=reference, screened=screened)
    return Label.KEEP, (
        f"{combined.score:.6g} over {len(all_seeds)} seeds beats {named} (confirmed on unseen seeds)"
    ), combined, evidence(rule, combined, confirmed=True, against=reference, screened=screened)


def _on_task_seeds(task: Task, evaluation: Evaluation) -> Evaluation:
    """A baseline measured on more seeds than the task's (``--baseline-seeds``) is scored on the
    task's seeds, as every candidate is: the other seeds measure the floor, and a mean over them
    would let an unchanged program beat its own baseline (measured on tiny: 0.58836 over 6
    seeds against 0.58414 on the task's 2)."""
    own = [evaluation.per_seed[s] for s in task.seeds if s in evaluation.per_seed]
    if not own or len(own) == len(evaluation.per_seed):
        return evaluation
    return msgspec.structs.replace(evaluation, score=math.fsum(own) / len(own))


def gain(direction: str, score: float, reference: float) -> float:
    """How much better ``score`` is than ``reference`` (positive: better), in the metric's units."""
    return reference - score if direction == "min" else score - reference


#: A measured floor contradicts the manifest's when they differ by more than this factor.
FLOOR_FACTOR = 2.0


def baseline_evidence(task: Task, evaluation: Evaluation, *, measure: bool = True) -> Evidence:
    """The baseline's seeds, and — when ``measure`` and on two or more — the floor the search judges by.

    The measured floor is the seeds' sample standard deviation; the manifest's floor is
    reported as contradicted when the two differ by more than :data:`FLOOR_FACTOR`.
    """
    seeds = dict(evaluation.per_seed) or {0: evaluation.score}
    declared = task.objective.noise_floor
    if not measure or len(seeds) < 2:
        return Evidence(rule="the search's starting program", seeds=seeds, noise_floor=declared)
    measured = spread(list(seeds.values()))
    note = ""
    if not declared / FLOOR_FACTOR <= measured <= declared * FLOOR_FACTOR:
        note = (f"the manifest's noise floor {declared:g} is contradicted: the base program's "
                f"{len(seeds)} seeds spread by {measured:.3g} (more than {FLOOR_FACTOR:g}x apart); "
                f"judging by the measured {measured:.3g}")
    return Evidence(
        rule=f"the starting program on {len(seeds)} seeds: its spread is the noise floor",
        seeds=seeds, noise_floor=measured, floor_source="measured",
        measured_floor=measured, declared_floor=declared, note=note,
    )
