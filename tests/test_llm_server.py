"""The llm backend against a real local model: llama.cpp's server with SmolLM2-135M-Instruct.

A 135M model writes poor code; that is the point. Whatever it returns must be
recorded (request and reply as a blob) and end as exactly one label, and the
loop must keep going. Needs ``llama-cpp-python[server]`` (the ``llm`` extra);
CI installs it and sets ARL_REQUIRE_LLM=1 so this test cannot be skipped there.
The model (a 93 MB wheel from PyPI) is cached under $ARL_CACHE/models or
~/.cache/arl/models.
"""

from __future__ import annotations

import io
from pathlib import Path

import msgspec

from arl.agents.lineage import build_view
from arl.agents.llm import ChatCall, ChatClient, LLMSpecialist
from arl.ledger import Ledger
from arl.ledger import events as ev
from arl.ledger.events import Label
from arl.ledger.programs import get_program, read_folder
from arl.ledger.projections import Projector
from arl.runners.search import Search, SearchConfig
from arl.runners.trials import reject as record_rejection, start_search, submit
from arl.runners.worker import Worker
from arl.tasks.manifest import load_task
from tests.llama import LocalServer

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "tasks" / "tiny"
def client(server: LocalServer) -> ChatClient:
    # Small replies keep the test quick (~65 tokens/s on 2 cores); a fixed seed keeps it repeatable.
    return ChatClient(server.url, server.model, max_tokens=160, read_timeout_s=120, deadline_s=300,
                      max_attempts=2, temperature=0.7, seed=7)


def test_the_server_answers_through_the_chat_client(llama_server):
    with client(llama_server) as c:
        call = c.complete([{"role": "system", "content": "You are terse."},
                           {"role": "user", "content": "Name one prime number."}])
    assert call.attempts == 1 and call.error is None
    assert call.response is not None and call.response["choices"][0]["message"]["role"] == "assistant"
    assert call.text.strip()
    usage = call.usage
    assert usage.prompt_tokens and usage.completion_tokens and usage.total_tokens
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert call.request["messages"][1]["content"] == "Name one prime number."


def _labels(ledger: Ledger, search: str) -> tuple[dict[int, ev.TrialProposed], dict[int, list[Label]]]:
    proposed: dict[str, ev.TrialProposed] = {}
    labels: dict[str, list[Label]] = {}
    for _, e in ledger.iter_events():
        if isinstance(e, ev.TrialProposed) and e.search_id == search:
            proposed[e.originator_id] = e
        elif isinstance(e, ev.TrialLabeled) and e.search_id == search:
            labels.setdefault(e.originator_id, []).append(e.label)
    return ({p.seq: p for p in proposed.values()},
            {p.seq: labels.get(t, []) for t, p in proposed.items()})


def test_llm_specialists_propose_and_every_trial_gets_one_label(llama_server, tmp_path, monkeypatch):
    monkeypatch.setenv("ARL_CACHE", str(tmp_path / "cache"))
    task = load_task(TINY)
    with Ledger.open(f"sqlite:///{tmp_path / 'l.db'}") as ledger, client(llama_server) as c:
        search = start_search(ledger, task, name="llm-smoke", config={"agents": "llm"})
        submit(ledger, task, search, 0, agent="baseline", surface="", program=read_folder(task.recipe_dir))
        Worker(ledger).run(exit_when_idle=True)
        projector = Projector(ledger, name="test")
        team = [LLMSpecialist(s.name, s, task, c, ledger.put_blob) for s in task.surfaces]

        def program_of(trial: str) -> dict[str, bytes]:
            return get_program(ledger, projector.state.trials[trial].program_digest)

        outcomes = []
        for seq in range(1, 4):
            specialist = team[(seq - 1) % len(team)]
            state = projector.catch_up()
            view = build_view(state, search, specialist=specialist.name, surface=specialist.surface.name,
                              metric=task.objective.metric, program_of=program_of)
            p = specialist.propose(view)
            common = dict(agent=p.agent, surface=p.surface, parents=p.parents, hypothesis=p.hypothesis,
                          expected_delta=p.expected_delta, backend=p.backend,
                          agent_call_digest=p.agent_call_digest)
            if p.program is None:
                assert p.rejected is not None
                record_rejection(ledger, search, seq, label=p.rejected[0], reason=p.rejected[1], **common)
            else:
                submit(ledger, task, search, seq, program=p.program, parent_program=view.best_program,
                       **common)
            Worker(ledger).run(exit_when_idle=True)
            outcomes.append(p)

        proposed, labels = _labels(ledger, search)
        assert sorted(proposed) == [0, 1, 2, 3]
        assert all(len(ls) == 1 for ls in labels.values()), labels
        assert labels[0] == [Label.BASELINE]
        for seq in range(1, 4):
            trial = proposed[seq]
            assert trial.backend == "llm" and trial.agent_call_digest
            call = msgspec.json.decode(ledger.get_blob(trial.agent_call_digest), type=ChatCall)
            assert call.model == llama_server.model and call.request["messages"][0]["role"] == "system"
            assert call.response is not None or call.error is not None
            if call.response is not None:
                assert call.usage.total_tokens
        # The loop survived whatever came back; show what that was (pytest -rA prints it).
        for seq, p in enumerate(outcomes, 1):
            print(f"#{seq} {p.surface}: {labels[seq][0].value} — {p.hypothesis[:80]!r} "
                  f"{(p.rejected or ('', ''))[1][:120]}")


def test_a_search_with_llm_specialists_end_to_end(llama_server, tmp_path, monkeypatch):
    """The real search driver and worker with llm specialists: 3 charged trials, each labelled once.

    In process, so the client can ask for short replies: the 135M model tends to
    ramble up to max_tokens, and `arl run` has no option for that yet.
    """
    monkeypatch.setenv("ARL_CACHE", str(tmp_path / "cache"))
    out = io.StringIO()

    def team(task, config, search):
        return [LLMSpecialist(s.name, s, task, client(llama_server), search.ledger.put_blob)
                for s in task.surfaces]

    with Ledger.open(f"sqlite:///{tmp_path / 'run.db'}") as ledger:
        config = SearchConfig(trials=3, agents="llm", llm_url=llama_server.url, llm_model=llama_server.model)
        summary = Search.start(ledger, load_task(TINY), config, team_factory=team, out=out).run()
        proposed, labels = _labels(ledger, summary.search_id)
        assert summary.charged == 3 and summary.stopped == "trial budget spent", out.getvalue()
        assert all(len(ls) == 1 for ls in labels.values()), labels
        assert sum(1 for seq, ls in labels.items() if seq > 0 and ls[0].charged) == 3
        for seq, trial in proposed.items():
            if seq == 0:
                continue
            assert trial.backend == "llm" and trial.agent in ("fit", "notes")
            call = msgspec.json.decode(ledger.get_blob(trial.agent_call_digest), type=ChatCall)
            assert call.request["model"] == llama_server.model
    print(out.getvalue()[-2000:])


def test_a_server_whose_context_cannot_hold_the_task_stops_the_search_at_once(tmp_path):
    """llama.cpp with a 512-token context: the tiny task's files alone do not fit. `arl run` asks
    once (plus the fitted retry it can rule out without asking), stops with one line naming the
    context and the fix, and charges nothing."""
    import os
    import subprocess
    import sys

    from tests.llama import running_server

    url = f"sqlite:///{tmp_path / 'small.db'}"
    env = {**os.environ, "ARL_CACHE": str(tmp_path / "cache")}
    with running_server(tmp_path, n_ctx=512) as small:
        done = subprocess.run(
            [sys.executable, "-m", "arl.runners.cli", "run", str(TINY), "--agents", "llm", "--llm-url", small.url,
             "--llm-model", small.model, "--trials", "3", "--store", url],
            env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("arl: error:") and "has a context of 512 tokens" in last and "--n_ctx" in last
    with Ledger.open(url) as ledger:
        state = Projector(ledger, name="t").catch_up()
        search = next(iter(state.searches.values()))
        rows = state.trials_of(search.search_id)
    assert search.charged == 0 and search.stop_reason.startswith("failed: the model at")
    assert [r.seq for r in rows if r.seq > 0] == []  # no proposal was recorded
