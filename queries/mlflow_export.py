"""MLflow runs from the ledger (``arl export mlflow``): each search a run, each trial a nested run.

A trial's run holds what a tracker shows best:

* **params** — agent, surface, backend, the parents' trial numbers, and each knob (a
  top-level ``NAME = value`` constant of a recipe file) the edit changed, old → new;
* **metrics** — the score, every metric the evaluator recorded, the deltas at label time,
  and the run's wall / CPU seconds and peak memory;
* **tags** — label, trial id and number, reason, the hypothesis (as the run's note), and
  the log position and hash-chain link it was exported at (``arl.position``,
  ``arl.chain_link``): the link names the exact record the run was made from;
* **artifacts** — the diff, and the run's log (or its stdout/stderr tails).

The export is incremental and idempotent: runs are found again by their ``arl.trial_id``
/ ``arl.search_id`` tags; a trial whose record has not grown since (same position) is left
as it is, one that has grown (a trial still running at the last export) is brought up to
date, and nothing is created twice.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from arl.ledger import events as ev
from arl.ledger.errors import ArlError, BlobError
from arl.ledger.programs import get_program
from arl.ledger.store import Ledger
from arl.queries.openlineage_export import state_of
from arl.tasks.knobs import constant_changes

#: MLflow's limits on one value (params: 6,000 characters; tags: 8,000).
PARAM_CHARS = 6000
TAG_CHARS = 8000
_METRIC_NAME = re.compile(r"[^A-Za-z0-9_\-. /]")
#: How runs end in MLflow, by the OpenLineage state of the label (COMPLETE / FAIL / ABORT).
_STATUS = {"COMPLETE": "FINISHED", "FAIL": "FAILED", "ABORT": "KILLED"}


class MlflowError(ArlError):
    """The MLflow tracking store cannot be reached or written."""


@dataclass
class _Trial:
    proposed: ev.TrialProposed
    position: int = 0
    program: str | None = None
    claimed: ev.TrialClaimed | None = None
    run: ev.RunFinished | None = None
    evaluated: ev.TrialEvaluated | None = None
    labeled: ev.TrialLabeled | None = None


@dataclass
class _Search:
    started: ev.SearchStarted
    position: int = 0
    stopped: ev.SearchStopped | None = None
    trials: list[_Trial] = field(default_factory=list)


@dataclass
class MlflowResult:
    """What one export did, by run: created, brought up to date, or found unchanged."""

    tracking_uri: str
    experiment: str
    experiment_id: str
    searches: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0

    def summary(self) -> str:
        return (f"{self.searches} search(es) into MLflow experiment {self.experiment!r} "
                f"({self.experiment_id}) at {self.tracking_uri}: {self.created} run(s) created, "
                f"{self.updated} updated, {self.unchanged} unchanged")


def _record(ledger: Ledger, search: str | None) -> list[_Search]:
    searches: dict[str, _Search] = {}
    trials: dict[str, _Trial] = {}
    for nid, e in ledger.iter_events():
        if isinstance(e, ev.SearchStarted):
            if search is None or e.originator_id == search:
                searches[e.originator_id] = _Search(e, nid)
            continue
        if isinstance(e, ev.SearchStopped):
            if e.originator_id in searches:
                searches[e.originator_id].stopped = e
                searches[e.originator_id].position = nid
            continue
        s = searches.get(getattr(e, "search_id", None))
        if s is None:
            continue
        if isinstance(e, ev.TrialProposed):
            trials[e.originator_id] = t = _Trial(e, nid)
            s.trials.append(t)
            continue
        t = trials.get(e.originator_id)
        if t is None:
            continue
        t.position = nid
        if isinstance(e, ev.TrialSubmitted):
            t.program = e.program_digest
        elif isinstance(e, ev.TrialClaimed) and t.claimed is None:
            t.claimed = e
        elif isinstance(e, ev.RunFinished) and e.refused is None:
            t.run = e
        elif isinstance(e, ev.TrialEvaluated):
            t.evaluated = e
        elif isinstance(e, ev.TrialLabeled):
            t.labeled = e
    return list(searches.values())


def _ms(at) -> int:
    return int(at.timestamp() * 1000)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _client(tracking_uri: str):
    try:
        from mlflow import MlflowClient
    except ImportError as e:
        raise MlflowError("the MLflow export needs MLflow; install arl's `mlflow` extra "
                          "(`pip install -e '.[mlflow]'`) or mlflow-skinny") from e
    return MlflowClient(tracking_uri=tracking_uri)


def _artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """A local store's artifacts go beside its database, not into whatever folder arl runs in."""
    parts = urlsplit(tracking_uri)
    if parts.scheme != "sqlite":
        return None
    db = Path(tracking_uri.split(":///", 1)[1]) if ":///" in tracking_uri else None
    if db is None:
        return None
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", experiment)
    return (db.resolve().parent / f"{db.stem}-artifacts" / safe).as_uri()


def export_mlflow(ledger: Ledger, tracking_uri: str, search: str | None = None, *,
                  experiment: str = "arl") -> MlflowResult:
    """Export every search (or one) into ``experiment`` of the MLflow store at ``tracking_uri``."""
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    searches = _record(ledger, search)
    if not searches:
        raise MlflowError(f"no search to export in {ledger.url.display()}")
    ledger_id = ledger.ledger_id()
    try:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            exp_id = client.create_experiment(experiment, artifact_location=_artifact_location(tracking_uri, experiment))
        elif found.lifecycle_stage != "active":
            raise MlflowError(f"experiment {experiment!r} is deleted in {tracking_uri}; restore it or pass "
                              "another --experiment")
        else:
            exp_id = found.experiment_id
        result = MlflowResult(tracking_uri, experiment, exp_id)
        runs = _existing(client, exp_id, ledger_id)
        for s in searches:
            _export_search(client, ledger, exp_id, ledger_id, s, runs, result)
    except MlflowException as e:
        raise MlflowError(f"MLflow at {tracking_uri} refused the export: {' '.join(str(e).split())[:300]}") from e
    return result


def _existing(client, exp_id: str, ledger_id: str) -> dict[str, Any]:
    """Runs this ledger exported before, by ``arl.trial_id`` or ``arl.search_id`` (search runs)."""
    runs: dict[str, Any] = {}
    token = None
    while True:
        page = client.search_runs([exp_id], filter_string=f"tags.`arl.ledger` = '{ledger_id}'",
                                  max_results=1000, page_token=token)
        for run in page:
            tags = run.data.tags
            key = tags.get("arl.trial_id") or f"search:{tags.get('arl.search_id')}"
            runs[key] = run
        token = page.token
        if not token:
            return runs


def _export_search(client, ledger: Ledger, exp_id: str, ledger_id: str, s: _Search, runs: dict[str, Any],
                   result: MlflowResult) -> None:
    from mlflow.entities import Param, RunTag

    st = s.started
    result.searches += 1
    tags = {"arl.ledger": ledger_id, "arl.search_id": st.originator_id, "arl.task": st.task,
            "arl.kind": st.kind, "arl.position": str(s.position)}
    if s.stopped is not None:
        tags["arl.stop_reason"] = _clip(s.stopped.reason, TAG_CHARS)
    params = {"task": st.task, "task_digest": st.task_digest, "direction": st.direction,
              "noise_floor": str(st.noise_floor), "kind": st.kind}
    params.update({f"config.{k}": _clip(str(v), PARAM_CHARS) for k, v in sorted(st.config.items())
                   if not isinstance(v, (dict, list))})
    run = runs.get(f"search:{st.originator_id}")
    if run is None:
        run = client.create_run(exp_id, start_time=_ms(st.at), run_name=st.name, tags=tags)
        client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()])
        result.created += 1
        changed = True
    else:
        changed = run.data.tags.get("arl.position") != str(s.position)
        if changed:
            client.log_batch(run.info.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
            result.updated += 1
        else:
            result.unchanged += 1
    parent_id = run.info.run_id
    # Programs by digest, loaded when a knob change needs them; "digests": trial id → its program.
    programs: dict[str, Any] = {"digests": {t.proposed.originator_id: t.program for t in s.trials}}
    seqs = {t.proposed.originator_id: t.proposed.seq for t in s.trials}
    for t in s.trials:
        _export_trial(client, ledger, exp_id, ledger_id, st, parent_id, t, runs, programs, seqs, result)
    if changed and s.stopped is not None:
        client.set_terminated(parent_id, "FINISHED", end_time=_ms(s.stopped.at))


def _export_trial(client, ledger: Ledger, exp_id: str, ledger_id: str, st: ev.SearchStarted, parent_id: str,
                  t: _Trial, runs: dict[str, Any], programs: dict[str, Any], seqs: dict[str, int],
                  result: MlflowResult) -> None:
    from mlflow.entities import Metric, Param, RunTag

    p = t.proposed
    tid = p.originator_id
    existing = runs.get(tid)
    if existing is not None and existing.data.tags.get("arl.position") == str(t.position):
        result.unchanged += 1
        return
    link = ledger.chain_link(t.position)
    tags = {
        "arl.ledger": ledger_id, "arl.search_id": st.originator_id, "arl.trial_id": tid, "arl.seq": str(p.seq),
        "arl.position": str(t.position), "arl.chain_link": link.hex() if link else "",
        "arl.label": t.labeled.label.value if t.labeled else "pending",
        "mlflow.parentRunId": parent_id, "mlflow.note.content": _clip(p.hypothesis, TAG_CHARS),
    }
    if t.labeled is not None and t.labeled.reason:
        tags["arl.reason"] = _clip(t.labeled.reason, TAG_CHARS)
    if t.claimed is not None:
        tags["arl.runner"] = t.claimed.runner
    when = int(time.time() * 1000)
    metrics: dict[str, float] = {}
    score = t.labeled.score if t.labeled and t.labeled.score is not None else (
        t.evaluated.score if t.evaluated else None)
    if score is not None:
        metrics["score"] = score
    if t.evaluated is not None:
        for k, v in t.evaluated.metrics.items():
            if v is not None:
                metrics.setdefault(_METRIC_NAME.sub("_", k), v)
    if t.labeled is not None:
        for k, v in (("delta_vs_best", t.labeled.delta_vs_best), ("delta_vs_parent", t.labeled.delta_vs_parent)):
            if v is not None:
                metrics[k] = v
    if t.run is not None:
        metrics["run.wall_s"] = t.run.wall_s
        # An imported run records no CPU time or memory: 0 there means "not measured".
        metrics.update({k: v for k, v in (("run.cpu_s", t.run.cpu_s), ("run.peak_rss_mb", t.run.peak_rss_mb)) if v > 0})
    start = t.claimed.at if t.claimed is not None else p.at
    if existing is None:
        run = client.create_run(exp_id, start_time=_ms(start), run_name=f"{p.seq} {p.agent}", tags=tags)
        run_id = run.info.run_id
        have_params: dict[str, str] = {}
        have_metrics: dict[str, float] = {}
        result.created += 1
    else:
        run_id = existing.info.run_id
        have_params, have_metrics = existing.data.params, existing.data.metrics
        result.updated += 1
    params = {"agent": p.agent, "surface": p.surface, "backend": p.backend or "manual",
              "parents": ",".join(str(seqs.get(x, x)) for x in p.parents) or "none"}
    knobs = _knob_changes(ledger, t, programs)
    params["knobs_changed"] = ",".join(knobs) or "none"
    params.update({f"knob.{k}": f"{a} -> {b}" for k, (a, b) in knobs.items()})
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), when, 0) for k, v in metrics.items() if have_metrics.get(k) != v],
        params=[Param(k, _clip(v, PARAM_CHARS)) for k, v in params.items() if k not in have_params],
        tags=[RunTag(k, v) for k, v in tags.items()],
    )
    _artifacts(client, ledger, run_id, p, t.run)
    if t.labeled is not None:
        client.set_terminated(run_id, _STATUS[state_of(t.labeled.label).value], end_time=_ms(t.labeled.at))


def _knob_changes(ledger: Ledger, t: _Trial, programs: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Knobs the edit changed against the first parent's program (none where a program is not stored)."""
    digest_of = programs["digests"]
    if not t.program or not t.proposed.parents or digest_of.get(t.proposed.parents[0]) is None:
        return {}
    parent, child = (_program(ledger, d, programs) for d in (digest_of[t.proposed.parents[0]], t.program))
    if parent is None or child is None:
        return {}
    return {k: (a or "unset", b or "unset") for k, (a, b) in constant_changes(parent, child).items()}


def _program(ledger: Ledger, digest: str, programs: dict[str, Any]) -> dict[str, bytes] | None:
    if digest not in programs:
        try:
            programs[digest] = get_program(ledger, digest)
        except BlobError:
            programs[digest] = None
    return programs[digest]


def _artifacts(client, ledger: Ledger, run_id: str, p: ev.TrialProposed, run: ev.RunFinished | None) -> None:
    if p.edit_digest:
        client.log_text(run_id, ledger.get_blob(p.edit_digest).decode("utf-8", "replace"), "diff.patch")
    if run is None:
        return
    if run.log_digest:
        client.log_text(run_id, ledger.get_blob(run.log_digest).decode("utf-8", "replace"), "run.log")
    else:
        for name, text in (("stdout_tail.txt", run.stdout_tail), ("stderr_tail.txt", run.stderr_tail)):
            if text:
                client.log_text(run_id, text, name)
