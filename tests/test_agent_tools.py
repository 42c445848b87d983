"""The ledger tools against a real ledger, real programs, real DuckDB and a real worker on the tiny task."""

from __future__ import annotations

import threading
from pathlib import Path

import msgspec
import pytest

from arl.agents.tools import SPECS, LedgerTools, ToolError
from arl.ledger import Ledger
from arl.ledger import events as ev
from arl.ledger.projections import State
from arl.ledger.programs import read_folder
from arl.runners.mcp_server import McpCall, McpSpecialist
from arl.runners.trials import start_search, submit
from arl.runners.worker import Worker
from arl.tasks.manifest import load_task

TINY = Path(__file__).resolve().parent / "tasks" / "tiny"
HONEST = [{"file": "train.py", "search": "SHRINK = 0.8", "replace": "SHRINK = 1.0"}]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ARL_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def task():
    return load_task(TINY)


def _search(ledger: Ledger, task, *, lineage: bool = True, trials: int = 10) -> str:
    search = start_search(ledger, task, name="tools", config={"trials": trials, "lineage": lineage})
    submit(ledger, task, search, 0, agent="baseline", surface="", program=read_folder(task.recipe_dir))
    Worker(ledger).run(exit_when_idle=True)
    return search


@pytest.fixture
def ledger(tmp_path):
    with Ledger.open(f"sqlite:///{tmp_path / 'l.db'}") as ledger:
        yield ledger


@pytest.fixture
def fit(ledger, task) -> McpSpecialist:
    search = _search(ledger, task)
    return McpSpecialist(ledger, search, "fit")


def test_lineage_shows_the_best_and_pages_through_the_view(fit):
    tools = fit.tools
    whole = tools.lineage(limit=16_000)
    assert whole["best"]["label"] == "baseline" and whole["best"]["seq"] == 0
    assert whole["budget"] == {"trials": 10, "charged": 0, "in_flight": 0, "stopped": None}
    assert whole["surface"] == "fit" and whole["files"] == ["train.py"]
    assert "Current best: trial 0 by baseline" in whole["text"] and whole["next_offset"] is None
    pages, offset = [], 0
    while offset is not None:
        page = tools.lineage(offset=offset, limit=20)
        pages.append(page["text"])
        offset = page["next_offset"]
    assert "".join(pages) == whole["text"] and len(pages) > 1


def test_read_program_lists_files_and_pages_one(fit, task):
    listing = fit.tools.read_program("best")
    files = {f["path"]: f for f in listing["files"]}
    assert files["train.py"]["yours"] and not files["NOTES.md"]["yours"]
    assert files["data_spec.py"]["protected"]
    source = (task.recipe_dir / "train.py").read_text()
    first = fit.tools.read_program("#0", path="train.py", limit=100)
    assert first["text"] == source[:100] and first["next_offset"] == 100 and first["total_chars"] == len(source)
    with pytest.raises(ToolError, match="not a file of trial #0"):
        fit.tools.read_program("baseline", path="nope.py")
    with pytest.raises(ToolError, match="no trial '#7'"):
        fit.tools.read_program("#7")


def test_sql_is_read_only_scoped_to_the_search_and_paged(fit, ledger, task):
    _search(ledger, task)  # another search in the same ledger: invisible to these tools
    out = fit.tools.sql("SELECT count(DISTINCT search) AS searches, count(*) AS n FROM trials")
    assert out["columns"] == ["searches", "n"] and out["rows"] == [[1, 1]]
    events = fit.tools.sql("SELECT type FROM events ORDER BY id", limit=2)
    assert events["rows"] == [["SearchStarted"], ["TrialProposed"]] and events["next_offset"] == 2
    rest = fit.tools.sql("SELECT type FROM events ORDER BY id", offset=2, limit=50)
    assert rest["rows"][0] == ["TrialSubmitted"] and rest["next_offset"] is None
    for bad, why in [
        ("DELETE FROM trials", "only SELECT"),
        ("SELECT 1; SELECT 2", "exactly one statement"),
        ("COPY trials TO '/tmp/x.csv'", "only SELECT"),
        ("SELECT * FROM read_csv('/etc/passwd')", "SQL failed"),
        ("SELECT * FROM log.trials", "SQL failed"),
        ("SELEC 1", "does not parse"),
    ]:
        with pytest.raises(ToolError, match=why):
            fit.tools.sql(bad)


def test_check_reports_what_the_scope_check_and_preflight_would_say(fit):
    ok = fit.tools.check(edits=_blocks(HONEST))
    assert ok["applies"] and ok["touched"] == ["train.py"] and ok["would_be"].startswith("submitted")
    cases = [
        ([{"file": "NOTES.md", "search": "Notes", "replace": "Jottings"}], "out_of_surface"),
        ([{"file": "data_spec.py", "search": "TRAIN_FILE", "replace": "TRAIN_FILE2"}], "illegal_edit"),
        ([{"file": "train.py", "search": "SHRINK = 0.8", "replace": "SHRINK = = 1"}], "invalid_edit"),
        ([{"file": "train.py", "search": "SHRINK = 0.8", "replace": "SHRINK = 0.8\n" + "#" * 5000}],
         "size_violation"),
        ([{"file": "train.py", "search": "SHRINK = 0.8", "replace": "SHRINK = 0.8"}], "duplicate"),
    ]
    for edits, label in cases:
        report = fit.tools.check(edits=_blocks(edits))
        assert report["would_be"] == label, (edits, report)
        assert any(not c["passed"] for c in report["checks"]) and report["reason"]
    missing = fit.tools.check(edits=_blocks([{"file": "train.py", "search": "LR = 3", "replace": "LR = 4"}]))
    assert not missing["applies"] and missing["would_be"] == "invalid_edit" and "not found" in missing["reason"]
    with pytest.raises(ToolError, match="give edits"):
        fit.tools.check()


def test_submit_records_a_trial_with_the_client_in_the_call_blob_and_wait_returns_its_label(fit, ledger):
    receipt = fit.tools.call("submit", {"hypothesis": "fit the slope honestly", "edits": HONEST,
                                        "expected_delta": -0.5},
                             caller={"client": "pytest", "client_version": "1", "session": "s-1"})
    assert receipt["status"] == "submitted" and receipt["seq"] == 1
    pending = fit.tools.wait(receipt["trial_id"], timeout_s=0.2)
    assert pending["timed_out"] and pending["label"] is None and pending["status"] == "submitted"
    Worker(ledger).run(exit_when_idle=True)
    done = fit.tools.wait(receipt["trial_id"], timeout_s=60)
    assert not done["timed_out"] and done["label"] == "keep" and done["score"] is not None
    proposed = ledger.stream(receipt["trial_id"])[0]
    assert isinstance(proposed, ev.TrialProposed)
    assert (proposed.agent, proposed.surface, proposed.backend) == ("fit", "fit", "mcp")
    call = msgspec.json.decode(ledger.get_blob(proposed.agent_call_digest), type=McpCall)
    assert (call.client, call.client_version, call.session, call.tool) == ("pytest", "1", "s-1", "submit")
    assert call.arguments["edits"] == HONEST
    # The new best is what the tools now read and diff.
    assert fit.tools.lineage()["best"]["seq"] == 1
    diff = fit.tools.diff("best")
    assert "-SHRINK = 0.8" in diff["text"] and "+SHRINK = 1.0" in diff["text"]
    assert diff["against"]["seq"] == 0
    assert fit.tools.diff("#0", against="#1")["text"].count("SHRINK") == 2


def test_an_edit_that_does_not_apply_or_leaves_the_surface_is_recorded_with_its_label(fit, ledger):
    bad = fit.tools.submit("typo", edits=_blocks([{"file": "train.py", "search": "nope", "replace": "x"}]))
    assert bad["status"] == "rejected" and bad["label"] == "invalid_edit" and "not found" in bad["reason"]
    out = fit.tools.submit("notes", edits=_blocks([{"file": "NOTES.md", "search": "Notes", "replace": "N"}]))
    assert out["status"] == "rejected" and out["label"] == "out_of_surface"
    assert "NOTES.md" in fit.tools.diff(f"#{out['seq']}")["text"]  # the recorded edit of a rejected trial
    with pytest.raises(ToolError, match="has no program"):
        fit.tools.read_program(f"#{bad['seq']}")
    with pytest.raises(ToolError, match="give a hypothesis"):
        fit.tools.submit(" ", edits=_blocks(HONEST))


def test_clients_racing_for_trial_numbers_each_get_their_own(fit, ledger):
    """Eight clients submit at once (threads, each its own tools and projector, one SQLite file):
    the losers of each race for a number take the next; no number twice, none lost."""
    clients = [McpSpecialist(ledger, fit.tools.search_id, "fit") for _ in range(8)]
    go = threading.Barrier(len(clients))
    replies: list[dict] = []

    def submit(i: int, client: McpSpecialist) -> None:
        go.wait()
        replies.append(client.tools.submit(f"client {i}", edits=_blocks(
            [{"file": "train.py", "search": "NOISE = 0.01", "replace": f"NOISE = 0.0{i}"}])))

    threads = [threading.Thread(target=submit, args=(i, c)) for i, c in enumerate(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    seqs = sorted(r["seq"] for r in replies)
    assert seqs == list(range(1, len(clients) + 1))
    rows = fit.tools.state().trials_of(fit.tools.search_id)
    assert sorted(r.hypothesis for r in rows if r.seq > 0) == sorted(f"client {i}" for i in range(8))


def test_submissions_stop_at_the_trial_budget_and_when_the_search_stopped(ledger, task):
    tools = McpSpecialist(ledger, _search(ledger, task, trials=1), "fit").tools
    tools.submit("one", edits=_blocks(HONEST))
    with pytest.raises(ToolError, match="trial budget is spent"):
        tools.submit("two", edits=_blocks(HONEST))
    ledger.append(ev.SearchStopped(originator_id=tools.search_id, originator_version=2, reason="interrupted"))
    with pytest.raises(ToolError, match="has stopped"):
        tools.submit("three", edits=_blocks(HONEST))


def test_lineage_off_refuses_everything_but_the_current_best(ledger, task):
    search = _search(ledger, task, lineage=False)
    tools = McpSpecialist(ledger, search, "fit").tools
    assert tools.lineage_on is False
    receipt = tools.submit("honest", edits=_blocks(HONEST))
    Worker(ledger).run(exit_when_idle=True)
    assert tools.wait(receipt["trial_id"], timeout_s=60)["label"] == "keep"  # its own trial: allowed
    view = tools.lineage()
    assert view["lineage"] == "off" and "How the best was reached" not in view["text"]
    assert tools.read_program("best", path="train.py")["text"].count("SHRINK = 1.0") == 1
    for call in (lambda: tools.read_program("baseline"), lambda: tools.diff("best"),
                 lambda: tools.diff("#0", against="best"), lambda: tools.check(edits=_blocks(HONEST), parents=["#0"])):
        with pytest.raises(ToolError, match="lineage is off"):
            call()
    rows = tools.sql("SELECT seq, label FROM trials")["rows"]
    assert rows == [[1, "keep"]]
    assert tools.sql("SELECT count(*) FROM lineage")["rows"] == [[0]]


def test_call_validates_names_and_arguments(fit):
    with pytest.raises(ToolError, match="unknown tool 'rm'"):
        fit.tools.call("rm", {})
    with pytest.raises(ToolError, match=r"bad arguments for read_program: .*unknown field `file`"):
        fit.tools.call("read_program", {"file": "train.py"})
    with pytest.raises(ToolError, match=r"bad arguments for sql: .*limit"):
        fit.tools.call("sql", {"query": "SELECT 1", "limit": 10_000})
    assert fit.tools.call("sql", {"query": "SELECT 41 + 1 AS x", "limit": "5"})["rows"] == [[42]]
    for spec in SPECS.values():  # flat schemas: tool-calling grammars and MCP clients read them as they are
        assert "$ref" not in str(spec.parameters()) and spec.parameters()["type"] == "object"


def test_tools_refuse_a_search_that_does_not_exist(ledger, task):
    with pytest.raises(ToolError, match="is not a search"):
        LedgerTools(ledger, task, "00000000-0000-4000-8000-000000000000", specialist="fit", surface="fit")


def _blocks(edits):
    from arl.agents.tools import EditBlock

    return [msgspec.convert(e, EditBlock) for e in edits]


def test_sql_shows_whatever_the_tools_have_shown(fit, ledger):
    tools = fit.tools
    before = tools.sql("SELECT count(*) FROM trials")["rows"]
    receipt = tools.submit("honest fit", edits=_blocks(HONEST))
    # Its own submission is in the very next answer: the copy waits for it.
    assert tools.sql("SELECT count(*) FROM trials")["rows"] == [[before[0][0] + 1]]
    Worker(ledger).run(exit_when_idle=True)
    labelled = tools.wait(receipt["trial_id"], timeout_s=60)
    rows = tools.sql(f"SELECT label FROM trials WHERE trial_id = '{receipt['trial_id']}'")["rows"]
    assert rows == [[labelled["label"]]]  # a label wait returned is in sql's rows too
