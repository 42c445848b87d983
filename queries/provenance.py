"""W3C PROV (PROV-JSON, PROV-N, PROV-O) and a Provenance Run Crate of a search, from the ledger.

The graph, per trial:

* the **proposal** activity (associated with its specialist) used the parent
  program(s), generated the diff and the child program; the child program
  ``wasDerivedFrom`` each parent program; the proposal ``wasInformedBy`` the
  labelling of the trials its lineage view showed (those labelled before the
  log position it saw, most recent first);
* the **preflight** and **run** activities (associated with the worker) used
  the program; the run generated the artifacts and the log;
* the **evaluation** (associated with the task's evaluator) used the
  artifacts, the evaluator version and the data digest;
* the **labelling** was informed by the evaluation (or by the preflight, for
  trials rejected before running).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from prov.constants import PROV
from prov.model import Namespace, ProvDocument

from arl.ledger import __version__
from arl.ledger import events as ev
from arl.ledger.errors import ArlError
from arl.ledger.store import Ledger
from arl.queries.openlineage_export import state_of

NS = "https://arl.dev/ns/prov#"
#: arl's PROV types (``prov:type`` values are qualified names, so PROV-O gets them as IRIs).
ARL = Namespace("arl", NS)
#: How many earlier labelled trials a proposal is recorded as informed by.
INFORMED_BY = 8


def _search_events(ledger: Ledger, search: str | None) -> tuple[list[ev.SearchStarted], dict[str, list[ev.Event]]]:
    searches: list[ev.SearchStarted] = []
    trials: dict[str, list[ev.Event]] = {}
    for _, e in ledger.iter_events():
        if isinstance(e, ev.SearchStarted):
            if search is None or e.originator_id == search:
                searches.append(e)
        elif hasattr(e, "search_id") and (search is None or e.search_id == search):
            trials.setdefault(e.originator_id, []).append(e)
    return searches, trials


def build_document(ledger: Ledger, search: str | None = None) -> ProvDocument:
    searches, trials = _search_events(ledger, search)
    if not searches:
        raise ArlError(f"no search to export in {ledger.url.display()}")
    doc = ProvDocument()
    doc.add_namespace("arl", NS)
    doc.add_namespace("prov", "http://www.w3.org/ns/prov#")
    known = {s.originator_id for s in searches}
    program_of: dict[str, str] = {}
    labelled: dict[str, list[tuple[int, str]]] = {}  # search → [(position, trial)] in log order
    # Programs and label positions first: derivations and "informed by" need them.
    for nid, e in ledger.iter_events():
        if getattr(e, "search_id", None) in known:
            if isinstance(e, ev.TrialSubmitted):
                program_of[e.originator_id] = e.program_digest
            if isinstance(e, ev.TrialLabeled):
                labelled.setdefault(e.search_id, []).append((nid, e.originator_id))

    for s in searches:
        doc.activity(f"arl:search/{s.originator_id}", s.at, None, {
            "prov:type": ARL["Search"], "prov:label": s.name, "arl:task": s.task,
            "arl:taskDigest": s.task_digest, "arl:kind": s.kind})
        doc.entity(f"arl:task/{s.task_digest}", {"prov:type": ARL["Task"], "prov:label": s.task})

    for tid, events in trials.items():
        proposed = next((e for e in events if isinstance(e, ev.TrialProposed)), None)
        if proposed is None:
            continue
        _trial(doc, proposed, events, program_of, labelled.get(proposed.search_id, []))
    return doc


def _trial(doc: ProvDocument, proposed: ev.TrialProposed, events: list[ev.Event],
           program_of: dict[str, str], labelled: list[tuple[int, str]]) -> None:
    tid, search = proposed.originator_id, proposed.search_id
    specialist = doc.agent(f"arl:specialist/{search}/{proposed.agent}", {
        "prov:type": PROV["SoftwareAgent"], "prov:label": proposed.agent,
        "arl:backend": proposed.backend or "manual", "arl:surface": proposed.surface})
    proposal = doc.activity(f"arl:proposal/{tid}", proposed.at, proposed.at, {
        "prov:type": ARL["Proposal"], "arl:seq": proposed.seq, "arl:hypothesis": proposed.hypothesis,
        "arl:trial": tid})
    doc.wasAssociatedWith(proposal, specialist)
    doc.wasInformedBy(proposal, f"arl:search/{search}")
    if proposed.agent_call_digest:
        doc.entity(f"arl:blob/{proposed.agent_call_digest}", {"prov:type": ARL["AgentCall"]})
        doc.used(proposal, f"arl:blob/{proposed.agent_call_digest}")
    for parent in proposed.parents:
        if parent in program_of:
            doc.used(proposal, f"arl:program/{program_of[parent]}")
    if proposed.seen_position is not None:
        seen = [t for pos, t in labelled if pos <= proposed.seen_position][-INFORMED_BY:]
        for other in seen:
            doc.wasInformedBy(proposal, f"arl:labelling/{other}")
    if proposed.edit_digest:
        diff = doc.entity(f"arl:blob/{proposed.edit_digest}", {"prov:type": ARL["Diff"]})
        doc.wasGeneratedBy(diff, proposal)
    program = program_of.get(tid)
    if program:
        child = doc.entity(f"arl:program/{program}", {"prov:type": ARL["Program"]})
        doc.wasGeneratedBy(child, proposal, proposed.at)
        for parent in proposed.parents:
            if parent in program_of and program_of[parent] != program:
                doc.wasDerivedFrom(child, f"arl:program/{program_of[parent]}")
    last_activity = proposal
    evaluation = None
    for e in events:
        if isinstance(e, ev.EditRejected):
            pre = doc.activity(f"arl:preflight/{tid}", e.at, e.at, {"prov:type": ARL["Preflight"],
                                                                    "arl:check": e.check, "arl:reason": e.reason})
            doc.wasInformedBy(pre, proposal)
            last_activity = pre
        elif isinstance(e, ev.TrialClaimed):
            worker = doc.agent(f"arl:runner/{e.runner}", {"prov:type": PROV["SoftwareAgent"], "arl:host": e.host})
            pre = doc.activity(f"arl:preflight/{tid}/{e.attempt}", e.at, e.at, {"prov:type": ARL["Preflight"]})
            doc.wasAssociatedWith(pre, worker)
            if program:
                doc.used(pre, f"arl:program/{program}")
            last_activity = pre
        elif isinstance(e, ev.RunFinished) and e.refused is None:
            run = doc.activity(f"arl:run/{tid}", _start(e), e.at, {
                "prov:type": ARL["Run"], "arl:wallSeconds": e.wall_s, "arl:sandbox": e.sandbox,
                "arl:exitCode": -1 if e.exit_code is None else e.exit_code})
            doc.wasAssociatedWith(run, f"arl:runner/{e.runner}")
            doc.wasInformedBy(run, last_activity)
            if program:
                doc.used(run, f"arl:program/{program}")
            for name, digest in e.artifacts.items():
                art = doc.entity(f"arl:blob/{digest}", {"prov:type": ARL["Artifact"], "prov:label": name})
                doc.wasGeneratedBy(art, run)
            if e.log_digest:
                log = doc.entity(f"arl:blob/{e.log_digest}", {"prov:type": ARL["Log"]})
                doc.wasGeneratedBy(log, run)
            last_activity = run
        elif isinstance(e, ev.TrialEvaluated):
            version = doc.entity(f"arl:evaluator/{e.evaluator}/{e.evaluator_version}",
                                 {"prov:type": ARL["EvaluatorVersion"]})
            judge = doc.agent(f"arl:evaluator/{e.evaluator}", {"prov:type": PROV["SoftwareAgent"]})
            evaluation = doc.activity(f"arl:evaluation/{tid}", e.at, e.at, {
                "prov:type": ARL["Evaluation"], "arl:score": "none" if e.score is None else e.score})
            doc.wasAssociatedWith(evaluation, judge)
            doc.used(evaluation, version)
            if e.data_digest:
                doc.entity(f"arl:data/{e.data_digest}", {"prov:type": ARL["Data"]})
                doc.used(evaluation, f"arl:data/{e.data_digest}")
            doc.wasInformedBy(evaluation, last_activity)
            last_activity = evaluation
        elif isinstance(e, ev.TrialLabeled):
            labelling = doc.activity(f"arl:labelling/{tid}", e.at, e.at, {
                "prov:type": ARL["Labelling"], "arl:label": e.label.value, "arl:reason": e.reason})
            doc.wasInformedBy(labelling, last_activity)


def _start(e: ev.RunFinished):
    return datetime.fromtimestamp(e.started_at, UTC) if e.started_at else None


#: The serializations of ``arl export prov``: PROV-JSON, PROV-N, and PROV-O as Turtle or JSON-LD.
PROV_FORMATS = ("json", "provn", "ttl", "jsonld")
_PROV_FILES = {"json": "prov.json", "provn": "prov.provn", "ttl": "prov.ttl", "jsonld": "prov.jsonld"}


def export_prov(ledger: Ledger, folder: Path, search: str | None = None,
                formats: Iterable[str] = ("json", "provn")) -> list[Path]:
    """Write the PROV document into ``folder``: ``prov.json`` (PROV-JSON), ``prov.provn`` (PROV-N),
    ``prov.ttl`` / ``prov.jsonld`` (PROV-O as RDF, by rdflib), as ``formats`` ask."""
    formats = list(formats)
    unknown = [f for f in formats if f not in _PROV_FILES]
    if unknown:
        raise ArlError(f"unknown PROV format {unknown[0]!r}; use one of {', '.join(PROV_FORMATS)}")
    doc = build_document(ledger, search)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = folder / _PROV_FILES[fmt]
        if fmt == "json":
            path.write_text(doc.serialize(format="json", indent=1))
        elif fmt == "provn":
            path.write_text(doc.get_provn())
        else:
            path.write_text(prov_o(doc, "turtle" if fmt == "ttl" else "json-ld"))
        paths.append(path)
    return paths


def prov_o(doc: ProvDocument, rdf_format: str) -> str:
    """The document as PROV-O: prov's RDF mapping, serialized by rdflib (``turtle`` or ``json-ld``)."""
    try:
        import rdflib  # noqa: F401  (prov's RDF serializer needs it)
    except ImportError as e:
        raise ArlError("PROV-O needs rdflib; install it with `pip install rdflib`") from e
    return doc.serialize(format="rdf", rdf_format=rdf_format)


#: The profiles an arl crate conforms to: the Provenance Run Crate and those it builds on.
CRATE_PROFILES = {
    "https://w3id.org/ro/wfrun/process/0.5": ("Process Run Crate", "0.5"),
    "https://w3id.org/ro/wfrun/workflow/0.5": ("Workflow Run Crate", "0.5"),
    "https://w3id.org/ro/wfrun/provenance/0.5": ("Provenance Run Crate", "0.5"),
    "https://w3id.org/workflowhub/workflow-ro-crate/1.0": ("Workflow RO-Crate", "1.0"),
}
#: The action status of a trial, by the OpenLineage state of its label.
_STATUS = {"COMPLETE": "http://schema.org/CompletedActionStatus", "FAIL": "http://schema.org/FailedActionStatus",
           "ABORT": "http://schema.org/FailedActionStatus"}
_ACTIVE = "http://schema.org/ActiveActionStatus"


def export_ro_crate(ledger: Ledger, folder: Path, search: str | None = None,
                    tables: Iterable[Path] = ()) -> Path:
    """A Provenance Run Crate: the search loop as the workflow, each search its run and organising
    action, each trial one action (instrument: its specialist; object: the parent programs and
    the data; result: its program and artifacts; start and end times) with the control action
    that ties it to the specialist's step. PROV files, Parquet tables and kept programs inside."""
    from rocrate.rocrate import ROCrate

    from arl.ledger.programs import get_program, write_folder

    folder.mkdir(parents=True, exist_ok=True)
    prov_files = export_prov(ledger, folder / "provenance", search)
    searches, trials = _search_events(ledger, search)
    if not searches:
        raise ArlError(f"no search to export in {ledger.url.display()}")
    crate = ROCrate(version="1.1")  # the version the Workflow Run Crate profiles 0.5 are written for
    crate.name = "arl search record"
    crate.description = "Trials, programs and provenance of an arl search, exported from its ledger."
    # The record is its owner's: arl cannot know under what terms they share it.
    crate.root_dataset["license"] = {"@id": crate.add_jsonld({
        "@id": "#license-not-stated", "@type": "CreativeWork", "name": "no license stated",
        "description": "arl exported this record without a license; ask the ledger's owner before reuse"}).id}
    crate.root_dataset["conformsTo"] = [{"@id": profile} for profile in CRATE_PROFILES]
    for profile, (name, version) in CRATE_PROFILES.items():
        crate.add_jsonld({"@id": profile, "@type": "CreativeWork", "name": name, "version": version})
    engine = crate.add_jsonld({"@id": "#arl", "@type": "SoftwareApplication", "name": "arl",
                               "description": "the auto-research ledger (this crate's exporter and the "
                               "engine that ran the searches)", "softwareVersion": __version__})
    for path in prov_files:
        crate.add_file(path, dest_path=f"provenance/{path.name}",
                       properties={"encodingFormat": "application/json" if path.suffix == ".json"
                                   else "text/provenance-notation", "name": path.name})
    for path in tables:
        crate.add_file(path, dest_path=f"tables/{path.name}",
                       properties={"encodingFormat": "application/vnd.apache.parquet", "name": path.stem})

    by_search: dict[str, list[list[ev.Event]]] = {s.originator_id: [] for s in searches}
    for events in trials.values():
        if isinstance(events[0], ev.TrialProposed) and events[0].search_id in by_search:
            by_search[events[0].search_id].append(events)
    for group in by_search.values():
        group.sort(key=lambda events: events[0].seq)
    program_of = {events[0].originator_id: e.program_digest for group in by_search.values() for events in group
                  for e in events if isinstance(e, ev.TrialSubmitted)}

    # The workflow: arl's loop as each search was configured, with one step (and tool) per specialist.
    loop = folder / "workflow" / "searches.json"
    loop.parent.mkdir(parents=True, exist_ok=True)
    loop.write_text(json.dumps([{"search": s.originator_id, "name": s.name, "task": s.task,
                                 "task_digest": s.task_digest, "direction": s.direction, "config": s.config}
                                for s in searches], indent=1, default=str))
    language = crate.add_jsonld({"@id": "#arl-search-configuration", "@type": "ComputerLanguage",
                                 "name": "arl search configuration", "version": __version__})
    tools, steps = [], []
    for s in searches:
        agents = list(dict.fromkeys(events[0].agent for events in by_search[s.originator_id]))
        for position, agent in enumerate(agents):
            key = f"{s.originator_id}/{agent}"
            tool = crate.add_jsonld({"@id": f"#specialist/{key}", "@type": "SoftwareApplication",
                                     "name": f"specialist {agent} ({s.name})", "softwareVersion": __version__})
            steps.append(crate.add_jsonld({"@id": f"#step/{key}", "@type": "HowToStep", "position": str(position),
                                           "name": f"trials of {agent}", "workExample": {"@id": tool.id}}))
            tools.append(tool)
    workflow = crate.add_file(loop, dest_path="workflow/searches.json", properties={
        "@type": ["File", "SoftwareSourceCode", "ComputationalWorkflow", "HowTo"],
        "name": "arl search loop", "encodingFormat": "application/json", "version": __version__,
        "programmingLanguage": {"@id": language.id},
        "hasPart": [{"@id": t.id} for t in tools], "step": [{"@id": st.id} for st in steps]})
    crate.root_dataset["mainEntity"] = {"@id": workflow.id}

    kept_dataset: dict[str, str] = {}
    for group in by_search.values():
        for events in group:
            label = next((e for e in events if isinstance(e, ev.TrialLabeled)), None)
            tid = events[0].originator_id
            if label is None or tid not in program_of or label.label.value not in ("keep", "baseline"):
                continue
            dest = folder / "programs" / tid
            write_folder(get_program(ledger, program_of[tid]), dest)
            ds = crate.add_dataset(dest, dest_path=f"programs/{tid}/", properties={
                "name": f"program of trial {events[0].seq} ({label.label.value})",
                "identifier": f"sha256:{program_of[tid]}"})
            kept_dataset[program_of[tid]] = ds.id

    def entity(kind: str, digest: str, name: str) -> dict:
        if kind == "program" and digest in kept_dataset:
            return {"@id": kept_dataset[digest]}
        ident = f"#{kind}/{digest}"
        if crate.get(ident) is None:
            crate.add_jsonld({"@id": ident, "@type": "CreativeWork", "name": name, "identifier": f"sha256:{digest}"})
        return {"@id": ident}

    ids = {s.originator_id for s in searches}
    stops = {e.originator_id: e for _, e in ledger.iter_events()
             if isinstance(e, ev.SearchStopped) and e.originator_id in ids}
    for s in searches:
        sid = s.originator_id
        stopped = stops.get(sid)
        controls = []
        for events in by_search[sid]:
            controls.append(_trial_action(crate, s, events, program_of, entity))
        run = {"@id": f"#search/{sid}", "@type": "CreateAction", "name": f"search {s.name}",
               "instrument": {"@id": workflow.id}, "startTime": s.at.isoformat(),
               "description": json.dumps({"task": s.task, "config": s.config}, default=str),
               "result": [{"@id": i} for i in kept_dataset.values()] or None,
               "actionStatus": {"@id": _STATUS["COMPLETE"] if stopped else _ACTIVE}}
        organize = {"@id": f"#organize/{sid}", "@type": "OrganizeAction", "name": f"arl ran search {s.name}",
                    "instrument": {"@id": engine.id}, "result": {"@id": run["@id"]},
                    "object": [{"@id": c} for c in controls], "startTime": s.at.isoformat()}
        if stopped is not None:
            run["endTime"] = organize["endTime"] = stopped.at.isoformat()
        crate.add_jsonld({k: v for k, v in run.items() if v is not None})
        crate.add_jsonld(organize)
    crate.write(folder)
    return folder / "ro-crate-metadata.json"


def _trial_action(crate, s: ev.SearchStarted, events: list[ev.Event], program_of: dict[str, str],
                  entity) -> str:
    """One trial's CreateAction and the ControlAction that ties it to its specialist's step; returns
    the control action's id."""
    proposed = events[0]
    assert isinstance(proposed, ev.TrialProposed)
    tid, key = proposed.originator_id, f"{s.originator_id}/{proposed.agent}"
    claimed = next((e for e in events if isinstance(e, ev.TrialClaimed)), None)
    run = next((e for e in events if isinstance(e, ev.RunFinished) and e.refused is None), None)
    evaluated = next((e for e in events if isinstance(e, ev.TrialEvaluated)), None)
    label = next((e for e in events if isinstance(e, ev.TrialLabeled)), None)
    objects = [entity("program", program_of[p], "parent program") for p in proposed.parents if p in program_of]
    if evaluated is not None and evaluated.data_digest:
        objects.append(entity("data", evaluated.data_digest, f"data of task {s.task}"))
    results = []
    if tid in program_of:
        results.append(entity("program", program_of[tid], f"program of trial {proposed.seq}"))
    if proposed.edit_digest:
        results.append(entity("diff", proposed.edit_digest, f"diff of trial {proposed.seq}"))
    if run is not None:
        results += [entity("artifact", d, name) for name, d in sorted(run.artifacts.items())]
        if run.log_digest:
            results.append(entity("log", run.log_digest, f"log of trial {proposed.seq}"))
    action = {"@id": f"#trial/{tid}", "@type": "CreateAction",
              "name": f"trial {proposed.seq}" + (f" ({label.label.value})" if label else ""),
              "description": proposed.hypothesis, "instrument": {"@id": f"#specialist/{key}"},
              "startTime": (claimed or proposed).at.isoformat(),
              "object": objects or None, "result": results or None,
              "actionStatus": {"@id": _STATUS[state_of(label.label).value] if label else _ACTIVE}}
    if label is not None:
        action["endTime"] = label.at.isoformat()
        if label.reason and state_of(label.label).value != "COMPLETE":
            action["error"] = f"{label.label.value}: {label.reason}"
    crate.add_jsonld({k: v for k, v in action.items() if v is not None})
    crate.add_jsonld({"@id": f"#control/{tid}", "@type": "ControlAction", "name": f"run trial {proposed.seq}",
                      "instrument": {"@id": f"#step/{key}"}, "object": {"@id": action["@id"]}})
    return f"#control/{tid}"
