"""``--agents agentic``: multi-turn tool-using sessions driven by the real search driver and worker.

Scripted sessions (a real HTTP server playing OpenAI replies with tool calls)
pin down every way a session can go — a submission, a malformed tool call, an
unknown tool, an edit outside the surface, no tool call at all, the turn limit,
the token budget — and show that each is recorded and labelled. The last test
runs sessions against the real llama.cpp server with SmolLM2 (tool calling
through ``--chat_format chatml-function-calling``), whose output nobody can
predict: there the loop must survive and every proposal be recorded and
labelled.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from arl.agents.agentic import AgenticSpecialist, Transcript, TranscriptReplay, agentic_team
from arl.agents.lineage import build_view
from arl.agents.llm import ChatClient
from arl.agents.tools import LedgerTools
from arl.ledger import Ledger
from arl.ledger import events as ev
from arl.ledger.programs import get_program, program_digest
from arl.ledger.projections import State
from arl.queries import QueryError, connect, run_named, run_sql
from arl.runners.search import Search, SearchConfig
from arl.tasks.manifest import load_task
from tests.test_agents_llm import Reply, ScriptedServer

TINY = Path(__file__).resolve().parent / "tasks" / "tiny"
USAGE = {"prompt_tokens": 300, "completion_tokens": 66, "total_tokens": 366}
HONEST = {"hypothesis": "the shrinkage biases the slope; fit it honestly", "expected_delta": -0.3,
          "edits": [{"file": "train.py", "search": "SHRINK = 0.8", "replace": "SHRINK = 1.0"}]}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ARL_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    s = ScriptedServer()
    yield s
    s.stop()


def calls(*tool_calls: tuple[str, object], content: str = "") -> Reply:
    """A chat completion whose message calls tools: (name, arguments as a dict or raw text)."""
    message = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = [
            {"id": f"call-{i}", "type": "function",
             "function": {"name": name, "arguments": args if isinstance(args, str) else json.dumps(args)}}
            for i, (name, args) in enumerate(tool_calls)]
    return Reply(body=json.dumps({
        "id": "chatcmpl-1", "object": "chat.completion", "model": "scripted",
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if tool_calls else "stop"}],
        "usage": USAGE,
    }).encode())


def _run(ledger: Ledger, config: SearchConfig, team_factory=None) -> tuple[str, str]:
    search = Search.start(ledger, load_task(TINY), config, name="agentic", out=io.StringIO(),
                          team_factory=team_factory)
    search.run()
    stopped = ledger.stream(search.search_id)[-1]
    assert isinstance(stopped, ev.SearchStopped)
    return search.search_id, stopped.reason


def _trials(ledger: Ledger, search: str) -> dict[int, tuple[ev.TrialProposed, list[ev.TrialLabeled]]]:
    out: dict[str, tuple[ev.TrialProposed, list[ev.TrialLabeled]]] = {}
    for _, e in ledger.iter_events():
        if isinstance(e, ev.TrialProposed) and e.search_id == search:
            out[e.originator_id] = (e, [])
        elif isinstance(e, ev.TrialLabeled) and e.search_id == search:
            out[e.originator_id][1].append(e)
    return {p.seq: (p, labels) for p, labels in out.values()}


def _transcript(ledger: Ledger, proposed: ev.TrialProposed) -> Transcript:
    assert proposed.agent_call_digest
    return msgspec.json.decode(ledger.get_blob(proposed.agent_call_digest), type=Transcript)


def test_scripted_sessions_each_end_recorded_and_labelled(server, tmp_path, monkeypatch):
    server.play(
        # fit: looks around, sends broken JSON and an unknown tool, then submits the honest fit.
        calls(("lineage", {}), ("read_program", {"path": "train.py"})),
        calls(("check", '{"edits": [{"file": "train.py"'), ("rm_rf", {})),
        calls(("submit", HONEST), ("lineage", {})),
        # notes: submits an edit of train.py, which is not its surface.
        calls(("submit", {"hypothesis": "notes tune the fit", "edits": [
            {"file": "train.py", "search": "NOISE = 0.01", "replace": "NOISE = 0.0"}]})),
        # fit: talks instead of calling, checks, looks again — and runs out of turns.
        calls(content="I think SHRINK should be 1.0."),
        calls(("check", {"edits": [{"file": "train.py", "search": "NOISE = 0.01", "replace": "NOISE = 0.0"}]})),
        calls(("sql", {"query": "SELECT seq, label FROM trials"})),
    )
    with Ledger.open(f"sqlite:///{tmp_path / 'l.db'}") as ledger:
        search, reason = _run(ledger, SearchConfig(trials=3, workers=1, agents="agentic", llm_url=server.url,
                                                   llm_model="scripted", turns=3))
        assert reason == "trial budget spent"
        trials = _trials(ledger, search)
        assert sorted(trials) == [0, 1, 2, 3]
        assert all(len(labels) == 1 for _, labels in trials.values())
        labels = {seq: labels[0].label.value for seq, (_, labels) in trials.items()}
        assert labels == {0: "baseline", 1: "keep", 2: "out_of_surface", 3: "invalid_edit"}

        first = _transcript(ledger, trials[1][0])
        assert trials[1][0].backend == "agentic" and trials[1][0].agent == "fit"
        assert trials[1][0].hypothesis == HONEST["hypothesis"] and trials[1][0].expected_delta == -0.3
        assert first.outcome == "submitted" and len(first.calls) == 3
        assert first.usage.total_tokens == 3 * 366
        assert [len(c.request["messages"]) for c in first.calls] == [2, 5, 8]  # each call as it was sent
        by_name: dict = {}
        for t in first.tool_calls:
            by_name.setdefault(t.name, t)
        assert "Current best: trial 0" in by_name["lineage"].result["text"]
        assert "SHRINK = 0.8" in by_name["read_program"].result["text"]
        assert "not valid JSON" in by_name["check"].error
        assert "unknown tool 'rm_rf'" in by_name["rm_rf"].error
        assert [t.error for t in first.tool_calls if t.turn == 3] == [None, "not run: the session ended at submit"]
        # The model saw each tool result (and each error) in its next request.
        second_request = server.requests[1]["messages"]
        assert [m["role"] for m in second_request[-3:]] == ["assistant", "tool", "tool"]
        third_request = server.requests[2]["messages"]
        assert any("not valid JSON" in m["content"] for m in third_request if m["role"] == "tool")
        assert server.requests[0]["tools"][0]["function"]["name"] == "lineage"
        assert {t["function"]["name"] for t in server.requests[0]["tools"]} == {
            "lineage", "sql", "read_program", "diff", "check", "submit"}

        assert "train.py" in trials[2][1][0].reason and trials[2][0].agent == "notes"
        last = _transcript(ledger, trials[3][0])
        assert last.outcome.startswith("turn limit (3) reached without a submission")
        assert trials[3][1][0].reason.startswith("turn limit (3) reached without a submission")
        assert [t.error for t in last.tool_calls][0] == "the reply called no tool"
        assert last.tool_calls[1].result["would_be"].startswith("submitted")

        # Tokens and cost per specialist and per keep, from the recorded usage and the user's prices.
        prices = tmp_path / "prices.toml"
        prices.write_text('[models.scripted]\nprompt = 1.0\ncompletion = 2.0\n')
        monkeypatch.setenv("ARL_PRICES", str(prices))
        con = connect(ledger)
        rows = run_named(con, "agent_cost", search=search).records()
        fit = next(r for r in rows if r["agent"] == "fit")
        assert (fit["calls"], fit["total_tokens"], fit["keeps"]) == (2, 6 * 366, 1)
        assert fit["tokens_per_keep"] == 6 * 366
        assert fit["cost"] == pytest.approx(6 * (300 * 1.0 + 66 * 2.0) / 1e6)
        assert fit["cost_per_keep"] == pytest.approx(fit["cost"])
        total = next(r for r in rows if r["agent"] == "(all)")
        assert total["total_tokens"] == 7 * 366 and total["calls"] == 3
        assert run_sql(con, "SELECT sum(total_tokens) FROM agent_calls").rows == [(7 * 366,)]
        prices.write_text("[models.scripted]\nprompt = 'cheap'\n")
        with pytest.raises(QueryError, match="needs numbers prompt and completion"):
            run_named(con, "agent_cost")
        monkeypatch.delenv("ARL_PRICES")  # the shipped table: every model free
        assert run_named(con, "agent_cost", search=search).records()[0]["cost"] == 0


def test_the_token_budget_cuts_the_session_and_stops_the_search(server, tmp_path):
    server.play(calls(("lineage", {})), calls(("lineage", {})), calls(("submit", HONEST)))
    with Ledger.open(f"sqlite:///{tmp_path / 'l.db'}") as ledger:
        search, reason = _run(ledger, SearchConfig(trials=5, workers=1, agents="agentic", llm_url=server.url,
                                                   llm_model="scripted", turns=8, budget_tokens=700))
        assert reason == "token budget spent"
        trials = _trials(ledger, search)
        assert sorted(trials) == [0, 1]
        proposed, labels = trials[1]
        assert labels[0].label is ev.Label.INVALID_EDIT
        assert "token budget (700) ran out during the session" in labels[0].reason
        assert _transcript(ledger, proposed).usage.total_tokens == 2 * 366
        assert len(server.requests) == 2  # the third call was never made


def test_a_session_is_re_driven_from_its_transcript_without_the_model(server, tmp_path):
    server.play(calls(("lineage", {}), ("read_program", {"path": "train.py"})), calls(("submit", HONEST)))
    with Ledger.open(f"sqlite:///{tmp_path / 'l.db'}") as ledger:
        search, _ = _run(ledger, SearchConfig(trials=1, workers=1, agents="agentic", llm_url=server.url,
                                              llm_model="scripted"))
        task = load_task(TINY)
        proposed = _trials(ledger, search)[1][0]
        # The ledger as the session saw it: everything before its proposal.
        position = next(nid for nid, e in ledger.iter_events() if e is proposed or (
            isinstance(e, ev.TrialProposed) and e.originator_id == proposed.originator_id))
        state = State()
        state.apply_all([(nid, e) for nid, e in ledger.read(0, position - 1)])
        tools = LedgerTools(ledger, task, search, specialist="fit", surface="fit", backend="agentic")
        tools.pin(state)
        replay = TranscriptReplay(ledger.get_blob, [proposed.agent_call_digest])
        specialist = AgenticSpecialist("fit", "fit", task, replay, ledger.put_blob, tools)
        view = build_view(state, search, specialist="fit", surface="fit", metric="mse",
                          program_of=lambda t: get_program(ledger, state.trials[t].program_digest))
        again = specialist.propose(view)
        assert replay.diverged == 0
        assert again.agent_call_digest == proposed.agent_call_digest  # the very same transcript
        assert (again.hypothesis, again.parents, again.expected_delta) == (
            proposed.hypothesis, proposed.parents, proposed.expected_delta)
        submitted = next(e for e in ledger.stream(proposed.originator_id) if isinstance(e, ev.TrialSubmitted))
        assert again.program is not None and program_digest(again.program) == submitted.program_digest
        with pytest.raises(Exception, match="no more recorded calls"):
            replay.complete([])


# --- the real model -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tool_server(tmp_path_factory) -> Iterator:
    """llama.cpp's server with SmolLM2, its chat template set up for OpenAI tool calls."""
    from tests.llama import running_server  # only this test needs the real model

    with running_server(tmp_path_factory.mktemp("llama-tools"), "--chat_format", "chatml-function-calling",
                        n_ctx=8192) as server:
        yield server


def test_agentic_sessions_against_smollm2_are_each_recorded_and_labelled(tool_server, tmp_path):
    config = SearchConfig(trials=2, workers=1, agents="agentic", llm_url=tool_server.url,
                          llm_model=tool_server.model, turns=2)

    def team(task, config, search):
        # The real driver and team; short replies and a fixed seed keep it quick and repeatable.
        client = ChatClient(tool_server.url, tool_server.model, max_tokens=160, read_timeout_s=300,
                            deadline_s=600, max_attempts=2, temperature=0.7, seed=7)
        return agentic_team(task, search.ledger, search.search_id, client, projector=search.projector,
                            turns=config.turns)

    with Ledger.open(f"sqlite:///{tmp_path / 'l.db'}") as ledger:
        search, reason = _run(ledger, config, team)
        # Charged labels end it; a model server that kept failing (infra_error, free) runs out of tries instead.
        assert reason == "trial budget spent" or reason.startswith("specialists ran out of proposals")
        trials = _trials(ledger, search)
        assert len(trials) >= 3
        assert all(len(labels) == 1 for _, labels in trials.values()), "every proposal gets exactly one label"
        for seq, (proposed, labels) in sorted(trials.items()):
            if seq == 0:
                continue
            assert proposed.backend == "agentic"
            transcript = _transcript(ledger, proposed)
            assert transcript.model == tool_server.model and transcript.calls
            assert transcript.outcome
            assert transcript.calls[0].request["tools"], "the model was offered the tools"
            if transcript.calls[-1].error is None:
                assert transcript.usage.total_tokens and transcript.usage.total_tokens > 0
            # The loop survived whatever came back; show what that was (pytest -rA prints it).
            print(f"#{seq} {proposed.agent}: {labels[0].label.value} — {transcript.outcome[:100]} — tools "
                  + ", ".join(f"{t.name or '(none)'}{'!' if t.error else ''}" for t in transcript.tool_calls))


def test_replay_agents_re_drives_an_agentic_search(server, tmp_path):
    from arl.runners import replay

    server.play(calls(("lineage", {}), ("read_program", {"path": "train.py"})), calls(("submit", HONEST)))
    with Ledger.open(f"sqlite:///{tmp_path / 'l.db'}") as ledger:
        search, _ = _run(ledger, SearchConfig(trials=1, workers=1, agents="agentic", llm_url=server.url,
                                              llm_model="scripted"))
        served = len(server.requests)
        report = replay.redrive(ledger, search)
    assert report.proposals == 1 and report.identical == 1, report.render()
    assert len(server.requests) == served  # no model call during the re-drive
