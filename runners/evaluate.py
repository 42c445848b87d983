"""`arl evaluate TASK DIR`: judge the outputs of a run made elsewhere, running nothing.

DIR holds what runs left: run logs (``*.log``, ``*.txt``; one run each, byte-identical
copies counted once) and/or per-run output folders ``seed<N>/`` as the worker keeps
them. Each becomes one ``SeedRun`` whose ``ARL_OUT`` holds the log as ``run.log``;
nothing is timed here, so each run's wallclock is what its log states (an evaluator
may define ``recorded_run(text) -> RecordedRun`` to say how to read seed and time).
The task's own evaluator then scores and checks them exactly as after a trial, and
the label is the one a worker would give a search's first result.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

import msgspec

from arl.ledger.errors import ArlError
from arl.ledger.events import Check, Label
from arl.runners.labels import label_evaluation
from arl.tasks.adapters import RUN_LOG, RecordedRun
from arl.tasks.code import load_evaluator
from arl.tasks.evaluation import EvalContext, Evaluation, Process, SeedRun
from arl.tasks.registry import resolve

LOG_SUFFIXES = (".log", ".txt")
_SEED_IN_NAME = re.compile(r"(?:seed[_-]?|_)(\d+)$", re.I)


class SeedScore(msgspec.Struct, kw_only=True):
    seed: int
    score: float


class RecordedLog(msgspec.Struct, kw_only=True):
    """One run found in DIR: its file, the seed it was given, the wallclock its log states."""

    path: str
    seed: int
    wall_s: float | None
    #: Other files in DIR with the same bytes, counted once.
    copies: list[str] = []
    #: This run judged alone (the evaluator's score and metrics for it), when DIR holds several.
    score: float | None = None
    metrics: dict[str, float] = {}


class EvaluateResult(msgspec.Struct, kw_only=True):
    task: str
    metric: str
    folder: str
    score: float | None
    seeds: list[SeedScore]
    checks: list[Check]
    label: str
    reason: str
    metrics: dict[str, float] = {}
    runs: list[RecordedLog] = []
    #: False when the score is read from the recipe's own log (its claim, not a measurement).
    verified: bool = True

    def to_json(self) -> dict[str, object]:
        """The documented JSON shape: score, verified, seeds, checks (name, value, limit, passed), label."""
        return {
            "score": self.score,
            "verified": self.verified,
            "seeds": [{"seed": s.seed, "score": s.score} for s in self.seeds],
            "checks": [{"name": c.name, "value": c.value, "limit": c.limit, "passed": c.passed} for c in self.checks],
            "label": self.label,
        }


def evaluate_folder(task_ref: str, folder: str | Path) -> EvaluateResult:
    """Score and check the runs in ``folder`` with the task's evaluator; raises ArlError in one line."""
    task = resolve(task_ref)
    evaluator = load_evaluator(task)
    folder = Path(folder).expanduser().resolve()
    if not folder.is_dir():
        raise ArlError(f"{folder}: no such folder; give the folder holding the run's logs and artifacts")
    recorded_run = getattr(evaluator.module, "recorded_run", None)
    with tempfile.TemporaryDirectory(prefix="arl-evaluate-") as tmp:
        root = Path(tmp)
        runs, found = _runs(folder, root, recorded_run)
        if not runs:
            raise ArlError(f"{folder} holds no run logs (*.log, *.txt) and no seed<N>/ output folders; "
                           "give the folder a run left its logs in")
        for empty in ("heldout", "train", "scratch"):
            (root / empty).mkdir()
        def judge(some: list[SeedRun]) -> Evaluation:
            ctx = EvalContext(task=task, runs=some, heldout=root / "heldout", train_data=root / "train",
                              run=_refuse, scratch=root / "scratch")
            try:
                return evaluator.evaluate(ctx)
            except ArlError:
                raise
            except Exception as e:
                raise ArlError(f"task {task.name}'s evaluator cannot judge {folder}: "
                               f"{type(e).__name__}: {e}") from None

        evaluation = judge(runs)
        if len(runs) > 1:  # each log alone too, so that a person sees which run says what
            for run, log in zip(runs, found):
                alone = judge([run])
                if isinstance(alone, Evaluation):
                    log.score = alone.score
                    log.metrics = {k: float(v) for k, v in alone.metrics.items()}
    if not isinstance(evaluation, Evaluation):
        raise ArlError(f"task {task.name}'s evaluator returned {type(evaluation).__name__}, not an Evaluation")
    verdict = label_evaluation(evaluation)
    label, reason = verdict if verdict is not None else (
        Label.KEEP, "legal: the label a search's first legal result gets")
    return EvaluateResult(
        task=task.name, metric=task.objective.metric, folder=str(folder), score=evaluation.score,
        seeds=[SeedScore(seed=s, score=v) for s, v in sorted(evaluation.per_seed.items())],
        checks=list(evaluation.checks), label=label.value, reason=reason,
        metrics={k: float(v) for k, v in evaluation.metrics.items()}, runs=found,
        verified=evaluation.verified,
    )


def _refuse(*args: object, **kwargs: object) -> Process:
    raise ArlError("arl evaluate runs nothing, but this task's evaluator needs to run code; "
                   "judge its runs with `arl task check` or a worker instead")


def _runs(folder: Path, root: Path, recorded_run) -> tuple[list[SeedRun], list[RecordedLog]]:
    logs = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in LOG_SUFFIXES)
    outs = sorted(p for p in folder.iterdir() if p.is_dir() and re.fullmatch(r"seed\d+", p.name))
    runs: list[SeedRun] = []
    found: list[RecordedLog] = []
    by_bytes: dict[bytes, RecordedLog] = {}
    used: set[int] = set()
    for path in logs:
        data = path.read_bytes()
        if data in by_bytes:
            by_bytes[data].copies.append(path.name)
            continue
        text = data.decode("utf-8", "replace")
        said = recorded_run(text) if recorded_run is not None else RecordedRun()
        seed = said.seed if said.seed is not None else _seed_from_name(path.stem, used)
        used.add(seed)
        out = root / f"run{len(runs)}" / "out"
        out.mkdir(parents=True)
        (out / RUN_LOG).write_bytes(data)
        process = Process(exit_code=0, wall_s=said.wall_s or 0.0, stdout_tail=text[-8192:], sandbox="recorded")
        runs.append(SeedRun(seed=seed, process=process, workspace=str(folder), out=str(out)))
        by_bytes[data] = log = RecordedLog(path=path.name, seed=seed, wall_s=said.wall_s)
        found.append(log)
    for out in outs:
        seed = int(out.name.removeprefix("seed"))
        log = out / RUN_LOG
        text = log.read_text(errors="replace") if log.is_file() else ""
        said = recorded_run(text) if recorded_run is not None and text else RecordedRun()
        process = Process(exit_code=0, wall_s=said.wall_s or 0.0, stdout_tail=text[-8192:], sandbox="recorded")
        runs.append(SeedRun(seed=seed, process=process, workspace=str(out), out=str(out)))
        found.append(RecordedLog(path=f"{out.name}/", seed=seed, wall_s=said.wall_s))
    return runs, found


def _seed_from_name(stem: str, used: set[int]) -> int:
    m = _SEED_IN_NAME.search(stem)
    if m:
        return int(m[1])
    return next(i for i in range(len(used) + 1) if i not in used)  # unnamed: the first free number


def render_table(result: EvaluateResult) -> str:
    lines = [f"{result.task}: {len(result.runs)} run(s) in {result.folder}"]
    for run in result.runs:
        copies = f" (same bytes: {', '.join(run.copies)})" if run.copies else ""
        wall = f"{run.wall_s:.1f} s" if run.wall_s is not None else "-"
        lines.append(f"  {run.path:32} seed {run.seed:<6} wallclock (as logged) {wall}{copies}")
        if run.metrics:
            lines.append("      " + "  ".join(f"{k} {v:.10g}" for k, v in run.metrics.items()))
    score = f"{result.score:.8g}" if result.score is not None else "none"
    lines.append(f"score: {result.metric} = {score}"
                 + ("" if result.verified else "  (from the recipe's log: its own claim, not verified)"))
    for s in result.seeds:
        lines.append(f"  seed {s.seed:<6} {s.score:.8g}")
    lines.append("checks:")
    for c in result.checks:
        status = "declared" if c.name.startswith("declared:") else ("pass" if c.passed else "FAIL")
        value = "-" if c.value is None else f"{c.value:.10g}"
        limit = "-" if c.limit is None else f"{c.limit:.10g}"
        lines.append(f"  {status:8} {c.name:28} {value:>16} {limit:>14}  {c.detail}".rstrip())
    lines.append(f"label: {result.label} — {result.reason}")
    return "\n".join(lines)


#: ``arl evaluate``'s exit code for legal runs whose score is the recipe's own claim.
UNVERIFIED = 3


def exit_code(result: EvaluateResult) -> int:
    """0 when the runs are legal and the score measured, 3 (``UNVERIFIED``) when legal but read from
    the recipe's log, 1 when a check failed or there is no score."""
    if result.label != Label.KEEP.value:
        return 1
    return 0 if result.verified else UNVERIFIED


__all__: Sequence[str] = ("EvaluateResult", "evaluate_folder", "render_table", "exit_code")
