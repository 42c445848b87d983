"""AIDE (WecoAI/aideml): the ``journal.json`` of a run, one node per solution tried.

A node has ``code``, ``plan``, ``step``, ``ctime``, the execution's
``exec_time`` / ``exc_type`` / ``exc_info``, the feedback model's
``analysis``, ``metric`` (``{"value", "maximize"}``) and ``is_buggy``; the
tree is ``node2parent`` (journal version 2) or each node's ``parent`` /
``parent_id``. Journals of AIDE's descendants (AI-Scientist-v2's tree search)
have the same shape with a structured metric (``value.metric_names[…]``):
its first metric's first dataset is the score, the others are metrics.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from arl.ledger import Ledger
from arl.ledger.events import Label
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
    number,
    rank,
    read_json,
    record_import,
    search_id_for,
    unix_time,
)

#: The file name AIDE's interpreter runs a node's code as.
PROGRAM_FILE = "runfile.py"


def import_aide(ledger: Ledger, path: str | Path, *, name: str | None = None,
                direction: str | None = None) -> ImportResult:
    """Import an AIDE ``journal.json`` as a search: one trial per node, its code as the program.

    ``direction``: ``min`` or ``max`` (default: the nodes' ``metric.maximize``).
    """
    journal = find_one(path, "an AIDE journal.json", names=("journal.json", "logs/journal.json"),
                       patterns=("logs/*/journal.json",))
    digests = {journal.name: digest_file(journal)}
    default_name = journal.parent.name if journal.parent.name not in ("logs", "") else journal.stem
    result = ImportResult(search_id_for(journal, "aide", digests), name or default_name, str(journal), "aide")
    if (done := already(ledger, result)) is not None:
        return done
    data = read_json(journal, "an AIDE journal")
    nodes = data.get("nodes") if isinstance(data, dict) else None
    if not isinstance(nodes, list):
        raise SourceError(f"{journal} is not an AIDE journal: it has no 'nodes' list")
    node2parent = data.get("node2parent") if isinstance(data.get("node2parent"), dict) else {}
    records: list[Record] = []
    quarantined: list[Flagged] = []
    directions: list[str] = []
    score_names: set[str] = set()
    for i, node in enumerate(nodes, start=1):
        raw = json.dumps(node, ensure_ascii=False, default=str)
        if not isinstance(node, dict) or not isinstance(node.get("id"), str) or not node["id"].strip():
            quarantined.append(Flagged(i, "node has no id (not an object with an 'id' string)", raw, None))
            continue
        records.append(_record(i, node, raw, node2parent, directions, score_names))
    steps = [r.extra.get("step") for r in records]
    if all(isinstance(s, int) for s in steps):
        records.sort(key=lambda r: r.extra["step"])
    elif records:
        result.notes.append("nodes have no step numbers throughout; kept in the journal's order")
    chosen = direction or _majority(directions)
    if chosen is None:
        chosen = "max"
        if any(r.score is not None for r in records):
            result.notes.append("no node records whether its metric is maximized; assumed higher is better "
                                "(pass --direction min if lower is)")
    _stage(records)
    rank(records, chosen, lambda r: r.label is Label.KEEP)
    config = {"format": "aide", "source": str(journal), "files": digests,
              "score": ", ".join(sorted(score_names)) or "metric", "version": str(data.get("__version", ""))}
    return record_import(ledger, result, records, quarantined, task="aide", direction=chosen, config=config)


def _record(i: int, node: dict[str, Any], raw: str, node2parent: dict[str, Any], directions: list[str],
            score_names: set[str]) -> Record:
    problems: list[str] = []
    nid = node["id"].strip()
    parent = node2parent.get(nid)
    if parent is None:
        p = node.get("parent") if node.get("parent") is not None else node.get("parent_id")
        parent = p.get("id") if isinstance(p, dict) else p
    score, metrics, maximize, metric_name = _metric(node.get("metric"), problems)
    if maximize is not None:
        directions.append("max" if maximize else "min")
    if metric_name:
        score_names.add(metric_name)
    buggy = bool(node.get("is_buggy"))
    exc_type = node.get("exc_type") if isinstance(node.get("exc_type"), str) else None
    wall_s = duration(node.get("exec_time"), "exec_time", problems)
    analysis = node.get("analysis") if isinstance(node.get("analysis"), str) else ""
    if buggy:
        label = Label.TRAIN_BUDGET_OVERRUN if exc_type == "TimeoutError" else Label.CRASH
        reason = _failure(node, exc_type) if exc_type else last_line(analysis)
        status = f"buggy ({exc_type})" if exc_type else "buggy"
    elif score is None and wall_s is None:
        label, status = Label.INFRA_ERROR, "not run"
        reason = "no execution result recorded (the run ended before this node ran)"
    elif score is None and _not_finite(node.get("metric")):
        label, status, reason = Label.DIVERGED, "ok", "its metric is not finite (nan or inf)"
    elif score is None:
        label, status, reason = Label.CRASH, "no metric", last_line(analysis) or "no metric recorded"
    else:
        label, status, reason = Label.KEEP, "ok", ""  # keep or discard: decided in step order
    step = node.get("step")
    code = node.get("code")
    return Record(
        line=i, raw=raw, source_id=nid, status=status, label=label, agent="aide",
        surface=str(node.get("stage") or ""), hypothesis=node.get("plan") if isinstance(node.get("plan"), str) else "",
        parent=str(parent) if parent else None, score=score, metrics=metrics,
        at=unix_time(node.get("ctime"), "ctime", problems), wall_s=wall_s,
        exit_code=(1 if buggy else 0) if wall_s is not None else None, notes=analysis, reason=reason,
        program={PROGRAM_FILE: code.encode()} if isinstance(code, str) and code else None,
        extra={"step": step} if isinstance(step, int) else {}, problems=problems,
    )


#: (score, metrics, maximize, the score's name) read from a node's metric.
Read = tuple[float | None, dict[str, float], bool | None, str | None]


def _metric(metric: Any, problems: list[str]) -> Read:
    """What a node's metric says, whichever of AIDE's shapes it has."""
    if metric is None:
        return None, {}, None, None
    if isinstance(metric, int | float) and not isinstance(metric, bool):
        x = number(metric, "metric", problems)
        return x, ({"metric": x} if x is not None else {}), None, "metric"
    if not isinstance(metric, dict):
        problems.append(f"metric is a {type(metric).__name__}; left empty")
        return None, {}, None, None
    maximize = metric.get("maximize") if isinstance(metric.get("maximize"), bool) else None
    value = metric.get("value")
    if isinstance(value, dict) and isinstance(value.get("metric_names"), list):
        return _structured(value["metric_names"], problems)
    name = metric.get("name") if isinstance(metric.get("name"), str) else "metric"
    x = number(value, "metric.value", problems)
    return x, ({name: x} if x is not None else {}), maximize, name


def _structured(names: list[Any], problems: list[str]) -> Read:
    score = maximize = chosen = None
    metrics: dict[str, float] = {}
    for entry in names:
        if not isinstance(entry, dict):
            continue
        mname = str(entry.get("metric_name") or "metric")
        for data in entry.get("data") or []:
            if not isinstance(data, dict):
                continue
            key = f"{mname}/{data.get('dataset_name') or 'data'}"
            x = number(data.get("final_value"), key, problems)
            if x is None:
                continue
            metrics[key] = x
            if score is None:
                score, chosen = x, mname
                lib = entry.get("lower_is_better")
                maximize = (not lib) if isinstance(lib, bool) else None
    return score, metrics, maximize, chosen


def _not_finite(metric: Any) -> bool:
    value = metric.get("value") if isinstance(metric, dict) else metric
    return isinstance(value, float) and not math.isfinite(value)


def _failure(node: dict[str, Any], exc_type: str) -> str:
    """The exception as the run's output states it, else its type and first argument."""
    out = node.get("_term_out")
    text = "".join(str(x) for x in out) if isinstance(out, list) else str(out or "")
    stated = [ln.strip() for ln in text.splitlines() if ln.strip().startswith(exc_type)]
    if stated:
        return stated[-1][:300]
    info = node.get("exc_info")
    args = info.get("args") if isinstance(info, dict) else None
    return f"{exc_type}: {last_line(str(args[0]), 240)}" if isinstance(args, list) and args else exc_type


def _stage(records: list[Record]) -> None:
    """AIDE's own names for a step: draft (no parent), debug (of a buggy parent), improve."""
    by_id = {r.source_id: r for r in records}
    for r in records:
        if r.surface:
            continue
        parent = by_id.get(r.parent or "")
        if r.parent is None:
            r.surface = "draft"
        elif parent is not None and parent.label in (Label.CRASH, Label.TRAIN_BUDGET_OVERRUN):
            r.surface = "debug"
        else:
            r.surface = "improve"


def _majority(directions: list[str]) -> str | None:
    if not directions:
        return None
    return max(("max", "min"), key=directions.count)
