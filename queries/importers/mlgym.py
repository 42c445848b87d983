"""MLGym (facebookresearch): one agent's trajectory file (``*.traj``).

A trajectory is a list of steps (``action``, ``observation``, ``thought``,
``execution_time``, ``state``) and an ``info`` with the ``exit_status`` and
the ``score`` of every evaluation. A trial is one evaluation of the
workspace: the baseline the first ``validate`` reports, each ``validate``,
and the final ``submit``; each one's parent is the evaluation before it (one
agent edits one workspace). Its program is the files as the agent last saw
them — MLGym prints a file whole after opening, creating or editing it; a file
changed by a shell command since is not followed — and its hypothesis is the
agent's reasoning since the evaluation before.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

from arl.ledger import Ledger
from arl.ledger.events import Label
from arl.ledger.programs import check_path
from arl.queries.importers.core import (
    Flagged,
    ImportResult,
    Record,
    SourceError,
    already,
    digest_file,
    duration,
    find_one,
    last_line,
    metrics_of,
    not_finite,
    rank,
    read_json,
    record_import,
    search_id_for,
)

_FILE_VIEW = re.compile(r"\[File: (?P<path>[^\n\]]+?) \((?P<n>\d+) lines total\)\]\n")
_NUMBERED = re.compile(r"^(\d+):(.*)$")
_SCORES = re.compile(r"(Baseline|Evaluation) Score: (\{[^\n]*\})")
_WORKSPACE = "/home/agent/workspace/"
#: Commands whose observation shows a file as the agent changed it.
_EDITS = frozenset({"edit", "insert", "create", "append"})


def import_mlgym(ledger: Ledger, path: str | Path, *, name: str | None = None, score: str | None = None,
                 direction: str | None = None) -> ImportResult:
    """Import an MLGym trajectory as a search: one trial per evaluation of the agent's workspace.

    ``score``: the key of the score dict to rank by (default: its first key);
    ``direction``: min or max (default: min for losses, errors and times, else max).
    """
    traj = find_one(path, "an MLGym trajectory (.traj)", patterns=("*.traj",))
    digests = {traj.name: digest_file(traj)}
    baseline = _results_baseline(traj.parent / "results.json", digests)
    run = traj.parent.name.split("__")
    default = "-".join(run[:2]) if len(run) > 1 else traj.stem
    result = ImportResult(search_id_for(traj, "mlgym", digests), name or default, str(traj), "mlgym")
    if (done := already(ledger, result)) is not None:
        return done
    data = read_json(traj, "an MLGym trajectory")
    steps = data.get("trajectory") if isinstance(data, dict) else None
    if not isinstance(steps, list):
        raise SourceError(f"{traj} is not an MLGym trajectory: it has no 'trajectory' list")
    info = data.get("info") if isinstance(data.get("info"), dict) else {}
    records, quarantined = _evaluations(steps, info, baseline)
    key = score or next((k for r in records for k in r.metrics), None)
    chosen = direction or _direction(key or "")
    if not direction and key:
        result.notes.append(f"scores ranked by {key!r}, {'lower' if chosen == 'min' else 'higher'} is better "
                            "(judged from its name; pass --direction if not)")
    for r in records:
        r.score = r.metrics.get(key) if key else None
        not_finite(r, (r.extra.get("scores") or {}).get(key))
        if r.label is Label.KEEP and r.score is None:
            r.label, r.reason = Label.CRASH, f"no {key} in its score"
    rank(records, chosen, lambda r: r.label is Label.KEEP)
    config = {"format": "mlgym", "source": str(traj), "files": digests, "score": key or "score",
              "exit_status": info.get("exit_status"), "model_stats": info.get("model_stats")}
    return record_import(ledger, result, records, quarantined, task=traj.stem, direction=chosen, config=config,
                         summary_extra={"steps": len(steps)})


def _results_baseline(path: Path, digests: dict[str, str]) -> dict[str, Any] | None:
    """The baseline score MLGym writes beside a trajectory (``results.json``), if it is there."""
    if not path.is_file():
        return None
    digests[path.name] = digest_file(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except (OSError, ValueError):
        return None
    base = data.get("baseline") if isinstance(data, dict) else None
    return base if isinstance(base, dict) else None


def _evaluations(steps: list[Any], info: dict[str, Any],
                 baseline: dict[str, Any] | None) -> tuple[list[Record], list[Flagged]]:
    files: dict[str, str] = {}
    first: dict[str, str] = {}  # each file as the agent first saw it, before editing it
    records: list[Record] = []
    quarantined: list[Flagged] = []
    thoughts: list[str] = []
    spent = 0.0
    previous: str | None = None
    for i, step in enumerate(steps, start=1):
        if not isinstance(step, dict):
            quarantined.append(Flagged(i, f"step {i} is not an object", json.dumps(step, default=str)[:2000], None))
            continue
        action = step.get("action") if isinstance(step.get("action"), str) else ""
        observation = step.get("observation") if isinstance(step.get("observation"), str) else ""
        thought = step.get("thought") if isinstance(step.get("thought"), str) else ""
        problems: list[str] = []
        spent += duration(step.get("execution_time"), f"step {i} execution_time", problems) or 0.0
        if thought.strip():
            thoughts.append(thought.strip())
        command = action.strip().split(maxsplit=1)[0] if action.strip() else ""
        seen = _see_files(observation)
        files.update(seen)
        if command not in _EDITS:
            for path, text in seen.items():
                first.setdefault(path, text)
        else:
            first.update({path: first.get(path, "") for path in seen if path not in first})
        if command.startswith("exit_"):  # the run ran out (of context, cost, steps): MLGym submits what is there
            command = "submit"
        if command not in ("validate", "submit"):
            continue
        raw = json.dumps({"step": i, "action": action, "observation": observation}, ensure_ascii=False)
        scores = {kind: _score_dict(text, problems) for kind, text in _SCORES.findall(observation)}
        if "Baseline" not in scores and baseline is not None:
            scores["Baseline"] = baseline
        if "Baseline" in scores and not records:
            records.append(Record(
                line=i, raw=raw, source_id="baseline", status="baseline", label=Label.BASELINE,
                agent="baseline", surface="workspace", hypothesis="the task's baseline, as MLGym reports it",
                metrics=metrics_of(scores["Baseline"], problems, where="baseline"), problems=list(problems),
                program=_program({p: t for p, t in first.items() if t}), extra={"scores": scores["Baseline"]},
            ))
            previous = "baseline"
        label, status, reason, values = _outcome(command, observation, scores, info, records)
        sid = f"step-{i}"
        records.append(Record(
            line=i, raw=raw, source_id=sid, status=status, label=label, agent="agent", surface="workspace",
            hypothesis="\n\n".join(thoughts), parent=previous,
            metrics=metrics_of(values, problems, where="score"), wall_s=spent, exit_code=0 if values else 1,
            reason=reason, program=_program(files), extra={"command": command, "scores": values}, problems=problems,
        ))
        previous, thoughts, spent = sid, [], 0.0
    return records, quarantined


def _outcome(command: str, observation: str, scores: dict[str, dict[str, Any]], info: dict[str, Any],
             records: list[Record]) -> tuple[Label, str, str, dict[str, Any]]:
    """(label, status, reason, score dict) of one evaluation."""
    if "Evaluation" in scores:
        return Label.KEEP, "validated", "", scores["Evaluation"]
    if command == "submit":
        graded = info.get("score") if isinstance(info.get("score"), list) else []
        measured = sum(1 for r in records if r.extra.get("command") == "validate" and r.metrics)
        status = str(info.get("exit_status") or "submitted")
        if len(graded) > measured and isinstance(graded[-1], dict):
            return Label.KEEP, status, "", graded[-1]
        if status.startswith(("evaluation_format_error", "submission_not_found", "unknown_error")):
            return Label.CRASH, status, status, {}
        return Label.INFRA_ERROR, status, "the trajectory records no score for the submission", {}
    if "Timeout" in observation[:200]:
        return Label.EVAL_BUDGET_OVERRUN, "timeout", last_line(observation[:400]), {}
    if observation.startswith("Submission artefact not found"):
        return Label.CRASH, "no artefact", last_line(observation.splitlines()[0] if observation else ""), {}
    return Label.CRASH, "failed", last_line(observation) or "validation failed", {}


def _program(files: dict[str, str]) -> dict[str, bytes] | None:
    """The workspace's files as a program; files outside the workspace are not part of it."""
    out: dict[str, bytes] = {}
    for path, text in sorted(files.items()):
        rel = path.removeprefix(_WORKSPACE)
        try:
            out[check_path(rel)] = text.encode()
        except ValueError:
            continue
    return out or None


def _see_files(observation: str) -> dict[str, str]:
    """Every file MLGym printed whole (every line numbered from 1 to the stated total)."""
    files: dict[str, str] = {}
    for m in _FILE_VIEW.finditer(observation):
        total = int(m.group("n"))
        lines: list[str] = []
        for text in observation[m.end():].split("\n"):
            got = _NUMBERED.match(text)
            if not got or int(got.group(1)) != len(lines) + 1:
                break
            lines.append(got.group(2))
        if len(lines) == total:
            files[m.group("path").strip()] = "\n".join(lines) + ("\n" if lines else "")
    return files


def _score_dict(text: str, problems: list[str]) -> dict[str, Any]:
    """A score dict as MLGym prints it (a Python literal; nan and inf as bare names)."""
    try:
        value = ast.literal_eval(re.sub(r"\b(nan|inf)\b", r"'\1'", text))
    except (ValueError, SyntaxError):
        problems.append(f"score {text[:60]!r} cannot be read; left empty")
        return {}
    if not isinstance(value, dict):
        return {}
    return {k: float(v) if v in ("nan", "inf") else v for k, v in value.items()}


def _direction(key: str) -> str:
    return "min" if re.search(r"loss|err|time|rmse|mse|mae|bpb|perplex|regret", key, re.IGNORECASE) else "max"
