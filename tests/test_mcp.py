"""``arl mcp``: the mcp package's own client drives a specialist over stdio (and streamable HTTP).

The server is the real command (``python -m arl.runners.cli mcp``) in its own
process; a real worker in this process runs what the client submits, so the
client's ``wait`` returns the label the worker recorded.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx
import msgspec
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client, types

from arl.ledger import Ledger
from arl.ledger import events as ev
from arl.ledger.programs import read_folder
from arl.runners.mcp_server import McpCall
from arl.runners.trials import start_search, submit
from arl.runners.worker import Worker
from arl.tasks.manifest import load_task

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "tasks" / "tiny"
CLIENT = types.Implementation(name="arl-test-client", version="2.0")
HONEST = [{"file": "train.py", "search": "SHRINK = 0.8", "replace": "SHRINK = 1.0"}]
TOOLS = {"lineage", "sql", "read_program", "diff", "check", "submit", "wait"}


def tiny_search(tmp_path: Path, monkeypatch, name: str) -> tuple[str, str]:
    """A search on the tiny task in a fresh SQLite ledger, its baseline submitted: (store URL, search id)."""
    monkeypatch.setenv("ARL_CACHE", str(tmp_path / "cache"))
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    task = load_task(TINY)
    with Ledger.open(url) as ledger:
        sid = start_search(ledger, task, name=name, config={"trials": 5, "lineage": True})
        submit(ledger, task, sid, 0, agent="baseline", surface="", program=read_folder(task.recipe_dir))
    return url, sid


@pytest.fixture
def search(tmp_path, monkeypatch) -> Iterator[tuple[str, str]]:
    """A search on the tiny task with its baseline labelled, and a worker running until the test ends."""
    url, sid = tiny_search(tmp_path, monkeypatch, "mcp")
    with Ledger.open(url) as ledger:
        stop = threading.Event()
        worker = threading.Thread(target=Worker(ledger, name="test-worker").run, args=(stop,), daemon=True)
        worker.start()
        try:
            yield url, sid
        finally:
            stop.set()
            worker.join(30)


def _arl_mcp(url: str, sid: str, *extra: str) -> list[str]:
    return ["-m", "arl.runners.cli", "mcp", "--store", url, "--search", sid, "--specialist", "fit", *extra]


@asynccontextmanager
async def _stdio_session(url: str, sid: str):
    params = StdioServerParameters(command=sys.executable, args=_arl_mcp(url, sid), cwd=str(ROOT),
                                   env={**os.environ})
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write, client_info=CLIENT) as session:
            await session.initialize()
            yield session


async def _call(session: ClientSession, name: str, arguments: dict) -> dict:
    result = await session.call_tool(name, arguments)
    assert not result.is_error, result.content
    return json.loads(result.content[0].text)


def test_an_mcp_client_reads_the_lineage_submits_and_waits_for_the_label(search):
    url, sid = search

    async def session_script() -> dict:
        async with _stdio_session(url, sid) as session:
            listed = await session.list_tools()
            assert {t.name for t in listed.tools} == TOOLS
            submit_tool = next(t for t in listed.tools if t.name == "submit")
            assert "hypothesis" in submit_tool.input_schema["required"]
            assert "edits" in submit_tool.input_schema["properties"]

            baseline = await _call(session, "wait", {"trial": "baseline", "timeout_s": 120})
            assert baseline["label"] == "baseline"
            lineage = await _call(session, "lineage", {})
            assert lineage["best"]["seq"] == 0 and lineage["surface"] == "fit"
            assert "Current best: trial 0 by baseline" in lineage["text"]
            source = await _call(session, "read_program", {"trial": "best", "path": "train.py"})
            assert "SHRINK = 0.8" in source["text"]
            checked = await _call(session, "check", {"edits": HONEST})
            assert checked["would_be"].startswith("submitted")

            # A call the tool cannot serve is an error reply, and the session goes on.
            bad = await session.call_tool("read_program", {"trial": "#99"})
            assert bad.is_error and "no trial '#99'" in bad.content[0].text
            refused = await session.call_tool("sql", {"query": "DROP TABLE trials"})
            assert refused.is_error and "only SELECT" in refused.content[0].text

            receipt = await _call(session, "submit", {"hypothesis": "fit the slope honestly",
                                                      "expected_delta": -0.4, "edits": HONEST})
            assert receipt["status"] == "submitted" and receipt["seq"] == 1
            labelled = await _call(session, "wait", {"trial": receipt["trial_id"], "timeout_s": 300})
            assert not labelled["timed_out"]
            rows = await _call(session, "sql", {"query": "SELECT seq, agent, backend, label FROM trials ORDER BY seq"})
            assert rows["rows"][1][:3] == [1, "fit", "mcp"] and rows["rows"][1][3] == labelled["label"]
            return labelled

    labelled = anyio.run(session_script)
    assert labelled["label"] == "keep" and labelled["score"] is not None

    with Ledger.open(url) as ledger:
        proposed = ledger.stream(labelled["trial_id"])[0]
        assert isinstance(proposed, ev.TrialProposed)
        assert (proposed.agent, proposed.surface, proposed.backend, proposed.seq) == ("fit", "fit", "mcp", 1)
        assert proposed.hypothesis == "fit the slope honestly" and proposed.expected_delta == -0.4
        call = msgspec.json.decode(ledger.get_blob(proposed.agent_call_digest), type=McpCall)
        assert (call.client, call.client_version, call.transport) == ("arl-test-client", "2.0", "stdio")
        assert call.session.startswith("stdio-") and call.arguments["edits"] == HONEST
        assert call.credential.startswith("local:")  # stdio: the OS user who started arl mcp
        labels = [e for e in ledger.stream(labelled["trial_id"]) if isinstance(e, ev.TrialLabeled)]
        assert len(labels) == 1


def test_arl_mcp_refuses_an_unknown_specialist_in_one_line(search):
    url, sid = search
    done = subprocess.run([sys.executable, "-m", "arl.runners.cli", "mcp", "--store", url, "--search", sid,
                           "--specialist", "optimizer"], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, stdin=subprocess.DEVNULL)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().count("\n") == 0
    assert "no specialist 'optimizer'" in done.stderr and "fit, notes" in done.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_http(url: str, sid: str, tmp_path: Path, *extra: str, specialist: str = "fit",
               env: dict | None = None) -> tuple[subprocess.Popen, str, Path]:
    """`arl mcp --transport http` as the README starts it, with its own token file; (process, endpoint, log)."""
    port = _free_port()
    log_path = tmp_path / f"mcp-http-{port}.log"
    args = [a if a != "fit" else specialist for a in _arl_mcp(url, sid)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, *args, "--transport", "http", "--port", str(port), *extra],
                                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, "ARL_TOKENS": str(tmp_path / "tokens.jsonl"), **(env or {})})
    endpoint = f"http://127.0.0.1:{port}/mcp"
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, log_path.read_text()
        try:
            httpx.get(endpoint, timeout=1)
            return proc, endpoint, log_path
        except httpx.TransportError:
            assert time.monotonic() < deadline, "arl mcp --transport http did not start listening"
            time.sleep(0.2)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(30)


def first_token(log: Path) -> str:
    """The token a first start prints once."""
    return next(w for w in log.read_text().split() if w.startswith("arl_"))


@asynccontextmanager
async def http_session(endpoint: str, token: str | None):
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=300)) as client:
        async with streamable_http_client(endpoint, http_client=client) as streams:
            async with ClientSession(streams[0], streams[1], client_info=CLIENT) as session:
                await session.initialize()
                yield session


def test_a_remote_client_over_streamable_http(search, tmp_path):
    url, sid = search
    proc, endpoint, log = start_http(url, sid, tmp_path)
    try:
        token = first_token(log)

        async def session_script() -> dict:
            async with http_session(endpoint, token) as session:
                assert {t.name for t in (await session.list_tools()).tools} == TOOLS
                await _call(session, "wait", {"trial": "baseline", "timeout_s": 120})
                receipt = await _call(session, "submit", {"hypothesis": "remote honest fit", "edits": HONEST})
                return await _call(session, "wait", {"trial": receipt["trial_id"], "timeout_s": 300})

        labelled = anyio.run(session_script)
        assert labelled["label"] == "keep"
        with Ledger.open(url) as ledger:
            proposed = ledger.stream(labelled["trial_id"])[0]
            call = msgspec.json.decode(ledger.get_blob(proposed.agent_call_digest), type=McpCall)
            assert (call.client, call.transport, proposed.backend) == ("arl-test-client", "http", "mcp")
            assert call.credential == "fit"  # the token's name: who the server let in
    finally:
        stop(proc)


def test_a_search_with_mcp_specialists_runs_their_trials_and_stops_at_the_budget(tmp_path, monkeypatch):
    """`arl run --agents mcp`: the driver measures the baseline, runs workers and stops at the budget."""
    from arl.runners.mcp_server import McpSpecialist
    from arl.runners.search import Search, SearchConfig

    monkeypatch.setenv("ARL_CACHE", str(tmp_path / "cache"))
    with Ledger.open(f"sqlite:///{tmp_path / 'ledger.db'}") as ledger:
        search = Search.start(ledger, load_task(TINY), SearchConfig(trials=2, workers=1, agents="mcp"),
                              name="mcp-run", out=open(os.devnull, "w"))
        driver = threading.Thread(target=search.run, daemon=True)
        driver.start()
        tools = McpSpecialist(ledger, search.search_id, "fit").tools
        assert tools.wait("baseline", timeout_s=120)["label"] == "baseline"
        first = tools.submit("fit the slope honestly", edits=_edits(HONEST))
        assert tools.wait(first["trial_id"], timeout_s=300)["label"] == "keep"
        second = tools.submit("less jitter", edits=_edits(
            [{"file": "train.py", "search": "NOISE = 0.01", "replace": "NOISE = 0.0"}]))
        assert tools.wait(second["trial_id"], timeout_s=300)["label"] is not None
        driver.join(120)
        assert not driver.is_alive()
        stopped = ledger.stream(search.search_id)[-1]
        assert isinstance(stopped, ev.SearchStopped) and stopped.reason == "trial budget spent"
        with pytest.raises(Exception, match="has stopped"):
            tools.submit("one more", edits=_edits(HONEST))


def _edits(edits: list[dict]) -> list:
    from arl.agents.tools import EditBlock

    return [msgspec.convert(e, EditBlock) for e in edits]
