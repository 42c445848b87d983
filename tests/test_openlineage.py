"""OpenLineage run events: every event checked against the OpenLineage JSON schema, sent to a real
HTTP receiver, and streamed live by a follower that is killed and restarted without losing one."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from arl.ledger import Ledger
from arl.ledger import events as ev
from arl.queries.importers import import_openevolve, import_recipes
from arl.queries.openlineage_export import SCHEMAS, LineageError, export_openlineage, lineage_events, state_of, to_dict
from arl.runners.search import SearchConfig, run_search
from tests.test_importers import OPENEVOLVE
from tests.test_queries_import import FIXTURES, needs_fixtures

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "tests" / "tasks" / "tiny")
VENDORED = ROOT / "tests" / "fixtures" / "openlineage"
CORE = "https://openlineage.io/spec/2-0-2/OpenLineage.json"


def _registry() -> Registry:
    resources = []
    for path in [*VENDORED.glob("*.json"), *SCHEMAS.glob("*.json")]:
        schema = json.loads(path.read_text())
        resources.append((schema["$id"], Resource.from_contents(schema)))
    return Registry().with_resources(resources)


REGISTRY = _registry()
RUN_EVENT = Draft202012Validator({"$ref": f"{CORE}#/$defs/RunEvent"}, registry=REGISTRY,
                                 format_checker=Draft202012Validator.FORMAT_CHECKER)


def _facets(event: dict):
    yield from event["run"].get("facets", {}).items()
    yield from event["job"].get("facets", {}).items()
    for d in event.get("inputs", []) + event.get("outputs", []):
        yield from d.get("facets", {}).items()


def check_event(event: dict) -> None:
    """The event against the RunEvent schema, and each facet against the schema its _schemaURL names."""
    errors = [e.message for e in RUN_EVENT.iter_errors(event)]
    assert not errors, errors[:3]
    for key, facet in _facets(event):
        assert facet["_producer"].startswith("https://") and facet["_schemaURL"], key
        url, _, pointer = facet["_schemaURL"].partition("#")
        assert url in {str(u) for u in REGISTRY}, f"facet {key}: no schema {url} (vendor it)"
        validator = Draft202012Validator({"$ref": facet["_schemaURL"]}, registry=REGISTRY,
                                         format_checker=Draft202012Validator.FORMAT_CHECKER)
        errors = [e.message for e in validator.iter_errors(facet)]
        assert not errors, (key, errors[:3])


@pytest.fixture(scope="module")
def ledger_url(tmp_path_factory):
    """A ledger with a real search of the tiny task (claims, runs, programs, data digests)."""
    tmp = tmp_path_factory.mktemp("ol")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ARL_CACHE", str(tmp / "cache"))
        url = f"sqlite:///{tmp / 'ledger.db'}"
        with Ledger.open(url) as ledger:
            summary = run_search(ledger, TINY, SearchConfig(trials=6, workers=2, seed=3), out=io.StringIO())
    return url, summary.search_id


@pytest.fixture(scope="module")
def imported_url(tmp_path_factory):
    """The paper release's pg_ablation_lineage_on run (201 trials) imported into its own ledger."""
    url = f"sqlite:///{tmp_path_factory.mktemp('olimp') / 'ledger.db'}"
    if FIXTURES.is_dir():
        with Ledger.open(url) as ledger:
            import_recipes(ledger, FIXTURES / "pg_ablation_lineage_on")
    return url


def _events(url: str, search: str | None = None) -> list[dict]:
    with Ledger.open(url, read_only=True) as ledger:
        return [to_dict(e) for _, e in lineage_events(ledger, search)]


def test_every_label_ends_in_the_state_the_issue_names():
    assert {lab.value: state_of(lab).value for lab in ev.Label} == {
        "baseline": "COMPLETE", "keep": "COMPLETE", "discard": "COMPLETE",
        "crash": "FAIL", "oom": "FAIL", "diverged": "FAIL", "train_budget_overrun": "FAIL",
        "eval_budget_overrun": "FAIL", "size_violation": "FAIL", "gate_miss": "FAIL", "invalid_edit": "FAIL",
        "out_of_surface": "FAIL", "illegal_edit": "FAIL", "duplicate": "ABORT", "infra_error": "ABORT"}


@needs_fixtures
def test_the_imported_201_trial_run_exports_one_parented_run_per_trial(imported_url):
    events = _events(imported_url)
    for e in events:
        check_event(e)
    search_events = [e for e in events if "arl_search" in e["run"]["facets"]]
    trial_events = [e for e in events if "arl_proposal" in e["run"]["facets"]]
    assert len(search_events) + len(trial_events) == len(events)
    (search_id,) = {e["run"]["runId"] for e in search_events}
    assert [e["eventType"] for e in search_events] == ["START", "COMPLETE"]
    by_run: dict[str, list[str]] = {}
    for e in trial_events:
        parent = e["run"]["facets"]["parent"]
        assert parent["run"]["runId"] == search_id and parent["job"]["name"] == "pg_ablation_lineage_on.search"
        assert e["job"]["namespace"] == parent["job"]["namespace"] and e["job"]["namespace"].startswith("arl://")
        assert e["job"]["name"] == f"pg_ablation_lineage_on.{e['run']['facets']['arl_proposal']['agent']}"
        by_run.setdefault(e["run"]["runId"], []).append(e["eventType"])
    assert len(by_run) == 201
    assert all(states[0] == "START" and states[-1] in ("COMPLETE", "FAIL") and len(states) == 2
               for states in by_run.values())
    ends = Counter(states[-1] for states in by_run.values())
    # The release's own status counts: 124 discard + 16 keep + the baseline; 38 + 11 + 11 failures.
    assert ends == {"COMPLETE": 141, "FAIL": 60}
    assert Counter(e["eventType"] for e in events) == {"START": 202, "COMPLETE": 142, "FAIL": 60}
    labels = Counter(e["run"]["facets"]["arl_outcome"]["label"] for e in trial_events if e["eventType"] != "START")
    assert labels == {"discard": 124, "eval_budget_overrun": 38, "keep": 16, "crash": 11, "size_violation": 11,
                      "baseline": 1}
    failed = [e for e in trial_events if e["eventType"] == "FAIL"]
    assert all(e["run"]["facets"]["errorMessage"]["message"].startswith(
        e["run"]["facets"]["arl_outcome"]["label"]) for e in failed)
    # Imports record a run's length, not a claim: their START rests on the run (or the proposal).
    assert {e["run"]["facets"]["arl_proposal"]["startedFrom"] for e in trial_events
            if e["eventType"] == "START"} <= {"run", "proposal"}
    assert _events(imported_url) == events  # a re-export gives the same events, ids and all


def test_a_real_search_exports_claims_programs_data_and_artifacts(ledger_url):
    url, search = ledger_url
    events = _events(url, search)
    for e in events:
        check_event(e)
    trials = [e for e in events if "arl_proposal" in e["run"]["facets"]]
    with Ledger.open(url, read_only=True) as ledger:
        proposed = {e.originator_id: e for _, e in ledger.iter_events() if isinstance(e, ev.TrialProposed)}
        claimed = {e.originator_id: e for _, e in ledger.iter_events() if isinstance(e, ev.TrialClaimed)}
        labeled = {e.originator_id: e for _, e in ledger.iter_events() if isinstance(e, ev.TrialLabeled)}
    assert {e["run"]["runId"] for e in trials} == set(proposed)  # run ids are the trial ids
    for e in trials:
        tid = e["run"]["runId"]
        if e["eventType"] == "START" and tid in claimed:
            assert e["run"]["facets"]["arl_proposal"]["startedFrom"] == "claim"
            assert e["eventTime"] == claimed[tid].at.isoformat()
        if e["eventType"] in ("COMPLETE", "FAIL", "ABORT"):
            outcome = e["run"]["facets"]["arl_outcome"]
            assert outcome["label"] == labeled[tid].label.value
            assert e["eventType"] == state_of(labeled[tid].label).value
    ends = [e for e in trials if e["eventType"] == "COMPLETE"]
    assert ends, "the tiny search has legal trials"
    for e in ends:
        names = [d["name"] for d in e["outputs"]]
        assert any("/programs/" in n for n in names) and any("/artifacts/" in n for n in names)
        assert any("/data/" in d["name"] for d in e["inputs"])
        for d in e["inputs"] + e["outputs"]:
            assert d["facets"]["version"]["datasetVersion"] == "sha256:" + d["name"].rsplit("/", 1)[1]
        outcome = e["run"]["facets"]["arl_outcome"]
        assert isinstance(outcome["score"], float) and outcome["checks"] and "passed" in outcome["checks"][0]
    children = [e for e in ends if e["run"]["facets"]["arl_proposal"]["parents"]]
    assert children and all(any("/programs/" in d["name"] for d in e["inputs"]) for e in children)


class Receiver:
    """A real HTTP server taking OpenLineage events at /api/v1/lineage; it can be slow, down (503)
    for its first N posts, or refuse everything (400)."""

    def __init__(self, *, delay_s: float = 0.0, unavailable: int = 0, refuse: bool = False) -> None:
        self.events: list[dict] = []
        self.paths: set[str] = set()
        self.lock = threading.Lock()
        self.unavailable = unavailable
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    receiver.paths.add(self.path)
                    down = receiver.unavailable > 0
                    receiver.unavailable -= 1 if down else 0
                if refuse or down:
                    self.send_response(400 if refuse else 503)
                    self.end_headers()
                    self.wfile.write(b"no such namespace" if refuse else b"")
                    return
                time.sleep(delay_s)
                with receiver.lock:
                    receiver.events.append(json.loads(body))
                self.send_response(201)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def pairs(self) -> set[tuple[str, str]]:
        with self.lock:
            return {(e["run"]["runId"], e["eventType"]) for e in self.events}


def _arl(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "arl.runners.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_export_sends_every_event_to_a_real_receiver_and_writes_ndjson(ledger_url, tmp_path):
    url, search = ledger_url
    receiver = Receiver()
    try:
        sent = _arl("export", "openlineage", receiver.url, "--store", url, cwd=tmp_path)
    finally:
        receiver.close()
    assert sent.returncode == 0, sent.stderr
    expected = _events(url)
    assert receiver.paths == {"/api/v1/lineage"} and receiver.events == expected
    for e in receiver.events:
        check_event(e)
    n = len(expected)
    assert sent.stdout.startswith(f"{n} OpenLineage events to {receiver.url} (START ")
    written = _arl("export", "openlineage", str(tmp_path / "out" / "l.ndjson"), "--store", url, "--search",
                   search[:8], cwd=tmp_path)
    assert written.returncode == 0, written.stderr
    lines = [json.loads(x) for x in (tmp_path / "out" / "l.ndjson").read_text().splitlines()]
    assert lines == _events(url, search)
    again = _arl("export", "openlineage", str(tmp_path / "out" / "l.ndjson"), "--store", url, "--search",
                 search[:8], cwd=tmp_path)
    assert again.returncode == 0 and [json.loads(x) for x in (tmp_path / "out" / "l.ndjson").read_text()
                                      .splitlines()] == lines  # rewritten, not appended: idempotent


def test_bad_targets_and_a_refusing_receiver_end_in_one_line(ledger_url, tmp_path):
    url, _ = ledger_url
    receiver = Receiver(refuse=True)
    try:
        refused = _arl("export", "openlineage", receiver.url, "--store", url, cwd=tmp_path)
    finally:
        receiver.close()
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "refused an event of run" in refused.stderr and "400: no such namespace" in refused.stderr
    with Ledger.open(url, read_only=True) as ledger:
        with pytest.raises(LineageError, match="is a folder; give a file"):
            export_openlineage(ledger, str(tmp_path))
        with pytest.raises(LineageError, match="names no host"):
            export_openlineage(ledger, "http://")
    missing = _arl("export", "openlineage", "--store", url, cwd=tmp_path)
    assert missing.returncode == 2 and "give a file (NDJSON) or a receiver's URL" in missing.stderr
    with Ledger.open(url, read_only=True) as ledger, pytest.raises(LineageError, match="did not answer"):
        export_openlineage(ledger, "http://127.0.0.1:9")  # nothing listens on the discard port


def _follow(url: str, target: str, state: Path, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "arl.runners.cli", "lineage", "follow", "--url", target,
                             "--state", str(state), "--store", url], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)


def _wait_for(predicate, timeout: float = 240.0) -> None:  # a deadline for a loaded machine, not a measure
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_follower_killed_and_restarted_loses_nothing(ledger_url, tmp_path):
    """SIGKILL mid-stream, a receiver that is down for its first posts, a search imported while the
    follower runs: every run event arrives (at least once, under the trials' own run ids)."""
    source, _ = ledger_url
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with Ledger.open(source, read_only=True) as a, Ledger.open(url) as b:  # a copy the test can grow
        b.put_blobs([row[2] for row in a.read_blob_rows(0, 1_000_000)])
        b.append(*(e for _, e in a.iter_events()))
    expected = {(e["run"]["runId"], e["eventType"]) for e in _events(url)}
    state = tmp_path / "position.json"
    receiver = Receiver(delay_s=0.02, unavailable=3)
    try:
        first = _follow(url, receiver.url, state, tmp_path)
        _wait_for(lambda: len(receiver.events) >= 10)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        assert first.returncode == -signal.SIGKILL
        assert "retrying in" in first.stderr.read()  # the 503s were said, not silent
        assert json.loads(state.read_text())["position"] > 0
        second = _follow(url, receiver.url, state, tmp_path)
        _wait_for(lambda: receiver.pairs() >= expected)
        with Ledger.open(url) as ledger:  # new trials while it follows
            added = import_openevolve(ledger, OPENEVOLVE, name="arc").search_id
        more = {(e["run"]["runId"], e["eventType"]) for e in _events(url, added)}
        _wait_for(lambda: receiver.pairs() >= expected | more)
        second.send_signal(signal.SIGTERM)
        second.wait(10)
        assert second.returncode == 0 and "stopped after" in second.stderr.read()
    finally:
        receiver.close()
    assert receiver.pairs() == expected | more
    # At-least-once: resent are at most the run events of the one ledger event the kill interrupted
    # (a START and an end), under the same run ids.
    assert len(receiver.events) - len(expected | more) <= 2
    for e in receiver.events:
        check_event(e)


def test_a_follower_refuses_the_position_of_another_ledger(ledger_url, tmp_path):
    url, _ = ledger_url
    state = tmp_path / "p.json"
    state.write_text(json.dumps({"ledger": "someone-else", "position": 3}))
    done = _arl("lineage", "follow", "--url", str(tmp_path / "x.ndjson"), "--state", str(state), "--store", url,
                cwd=tmp_path)
    assert done.returncode == 2 and "is the position of another ledger" in done.stderr
    from arl.queries.openlineage_export import follow

    state.write_text("{not json")
    with Ledger.open(url, read_only=True) as ledger, pytest.raises(LineageError, match="is not a follower's position"):
        follow(ledger, str(tmp_path / "x.ndjson"), state=state, say=lambda _l: None)
    assert done.stderr.count("\n") == 1 and not (tmp_path / "x.ndjson").exists()


def test_follower_position_is_at_least_once_in_process(ledger_url, tmp_path):
    """The library call: a follower stopped and started again sends only what came after its position."""
    from arl.queries.openlineage_export import follow

    url, _ = ledger_url
    out, state = tmp_path / "l.ndjson", tmp_path / "p.json"
    expected = _events(url)
    with Ledger.open(url, read_only=True) as ledger:
        stop = threading.Event()
        runner = threading.Thread(target=follow, args=(ledger, str(out)), kwargs={"state": state, "stop": stop,
                                                                                  "say": lambda _l: None})
        runner.start()
        _wait_for(lambda: out.exists() and len(out.read_text().splitlines()) == len(expected))
        stop.set()
        runner.join(10)
        again = threading.Event()
        threading.Timer(1.0, again.set).start()
        assert follow(ledger, str(out), state=state, stop=again, say=lambda _l: None) == 0
    assert [json.loads(x) for x in out.read_text().splitlines()] == expected
    assert json.loads(state.read_text())["position"] > 0


def test_the_schema_check_rejects_a_broken_event(ledger_url):
    """The checks above can fail: a missing required field, a facet off its schema, an unknown facet schema."""
    url, _ = ledger_url
    good = _events(url)[-2]
    check_event(good)
    for breaks in (lambda e: e.pop("eventTime"), lambda e: e["run"].update(runId="not-a-uuid"),
                   lambda e: e["run"]["facets"]["arl_proposal"].update(seq="three"),
                   lambda e: e["run"]["facets"]["parent"]["run"].pop("runId"),
                   lambda e: e["run"]["facets"]["arl_proposal"].update(
                       _schemaURL="https://example.org/Unknown.json#/$defs/X")):
        broken = json.loads(json.dumps(good))
        breaks(broken)
        with pytest.raises(AssertionError):
            check_event(broken)


def test_a_follower_stops_at_an_event_its_receiver_refuses_and_keeps_its_position(ledger_url, tmp_path):
    from arl.queries.openlineage_export import follow

    url, _ = ledger_url
    state = tmp_path / "p.json"
    receiver = Receiver(refuse=True)
    try:
        with Ledger.open(url, read_only=True) as ledger, pytest.raises(LineageError, match="refused an event"):
            follow(ledger, receiver.url, state=state, stop=threading.Event(), say=lambda _l: None)
    finally:
        receiver.close()
    assert receiver.events == [] and not state.exists()  # nothing taken, nothing passed over
