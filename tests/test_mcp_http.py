"""``arl mcp --transport http`` against hostile and greedy clients: real server processes, real HTTP.

Without a valid token a client gets 401 and nothing else — no tool list, no
submit; a token bound to another specialist gets 403; a session opened with
one token cannot be used with another; a foreign Host header is refused. What
is recorded as the submitter is the token's name, whatever the client claims.
Submissions are rate-limited per token, pending waits are bounded per session
and overall, and ``sql`` answers while dozens of waits are pending.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import httpx
import msgspec
import pytest
from mcp import ClientSession, types

from arl.ledger import Ledger
from arl.runners.mcp_server import McpCall
from tests.test_mcp import HONEST, ROOT, _call, first_token, http_session, search, start_http, stop, tiny_search

__all__ = ["search"]  # the fixture, shared with tests/test_mcp.py

INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "curl", "version": "1"}}}
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@pytest.fixture
def idle_search(tmp_path, monkeypatch) -> Iterator[tuple[str, str]]:
    """A search whose baseline is submitted and never run (no worker): a wait on it stays pending."""
    yield tiny_search(tmp_path, monkeypatch, "idle")


def arl(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "arl.runners.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=60, stdin=subprocess.DEVNULL,
                          env={**os.environ, "ARL_TOKENS": str(tmp_path / "tokens.jsonl")})


def post(endpoint: str, body: dict, headers: dict | None = None) -> httpx.Response:
    return httpx.post(endpoint, json=body, headers={**ACCEPT, **(headers or {})}, timeout=30)


def test_a_client_without_a_token_gets_no_tool_list_and_no_submit(idle_search, tmp_path):
    url, sid = idle_search
    proc, endpoint, log = start_http(url, sid, tmp_path)  # as the README starts it
    try:
        token = first_token(log)  # made on first start, shown once
        assert "shown once" in log.read_text()
        assert token not in (tmp_path / "tokens.jsonl").read_text()  # only its hash is kept
        calls = [INITIALIZE, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
                 {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {
                     "name": "submit", "arguments": {"hypothesis": "free trial", "edits": HONEST}}}]
        for headers in ({}, {"Authorization": "Bearer arl_guessed"}, {"Authorization": f"Basic {token}"},
                        {"Authorization": f"Bearer {token}x"}, {"Authorization": "Bearer"}):
            for body in calls:
                r = post(endpoint, body, headers)
                assert r.status_code == 401, (headers, body, r.text)
                assert r.json()["error"] == "invalid_token" and "tools" not in r.text
                assert r.headers["www-authenticate"].startswith("Bearer")

        async def without_token() -> None:
            async with http_session(endpoint, None):
                pass

        with pytest.raises(BaseException):
            anyio.run(without_token)
        with Ledger.open(url, read_only=True) as ledger:  # nothing was recorded: only the baseline
            assert [e for e in ledger.iter_events() if type(e[1]).__name__ == "TrialProposed"][1:] == []

        r = post(endpoint, INITIALIZE, {"Authorization": f"Bearer {token}"})
        assert r.status_code == 200 and "arl" in r.text
    finally:
        stop(proc)


def test_tokens_are_bound_to_a_specialist_and_sessions_to_their_token(search, tmp_path):
    url, sid = search
    made = {}
    for name, bound in (("alice", "notes"), ("bob", "fit"), ("carol", None)):
        done = arl("token", "add", name, *(["--specialist", bound] if bound else []), tmp_path=tmp_path)
        assert done.returncode == 0, done.stderr
        made[name] = done.stdout.strip()
    listed = arl("token", "list", tmp_path=tmp_path).stdout
    assert "alice" in listed and "notes" in listed and not any(t in listed for t in made.values())
    proc, endpoint, log = start_http(url, sid, tmp_path)
    try:
        assert "arl_" not in log.read_text()  # tokens exist: none is made, none printed
        refused = post(endpoint, INITIALIZE, {"Authorization": f"Bearer {made['alice']}"})
        assert refused.status_code == 403 and "bound to specialist 'notes'" in refused.json()["error_description"]

        opened = post(endpoint, INITIALIZE, {"Authorization": f"Bearer {made['bob']}"})
        session = opened.headers["mcp-session-id"]
        hijack = post(endpoint, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
                      {"Authorization": f"Bearer {made['carol']}", "mcp-session-id": session,
                       "mcp-protocol-version": "2025-06-18"})
        assert hijack.status_code == 404 and "tools" not in hijack.text

        foreign = post(endpoint, INITIALIZE, {"Authorization": f"Bearer {made['bob']}", "Host": "evil.example"})
        assert foreign.status_code == 421

        async def claims_to_be_someone_else() -> dict:
            async with http_session(endpoint, made["bob"]) as s:
                await _call(s, "wait", {"trial": "baseline", "timeout_s": 120})
                return await _call(s, "submit", {"hypothesis": "honest fit", "edits": HONEST})

        receipt = anyio.run(claims_to_be_someone_else)
        with Ledger.open(url, read_only=True) as ledger:
            proposed = ledger.stream(receipt["trial_id"])[0]
            call = msgspec.json.decode(ledger.get_blob(proposed.agent_call_digest), type=McpCall)
        # The client said it was arl-test-client; the server recorded the token that let it in.
        assert (call.credential, call.client, proposed.agent) == ("bob", "arl-test-client", "fit")

        assert arl("token", "revoke", "bob", tmp_path=tmp_path).returncode == 0
    finally:
        stop(proc)
    proc, endpoint, _ = start_http(url, sid, tmp_path)
    try:
        assert post(endpoint, INITIALIZE, {"Authorization": f"Bearer {made['bob']}"}).status_code == 401
    finally:
        stop(proc)


def test_binding_beyond_loopback_needs_tokens(idle_search, tmp_path):
    url, sid = idle_search
    done = arl("mcp", "--store", url, "--search", sid, "--specialist", "fit", "--transport", "http",
               "--host", "0.0.0.0", "--no-auth", tmp_path=tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "only a loopback address" in done.stderr
    proc, endpoint, log = start_http(url, sid, tmp_path, "--host", "0.0.0.0")
    try:
        assert post(endpoint, INITIALIZE).status_code == 401
        assert post(endpoint, INITIALIZE, {"Authorization": f"Bearer {first_token(log)}"}).status_code == 200
    finally:
        stop(proc)


def test_a_group_writable_or_linked_token_file_is_refused(idle_search, tmp_path):
    url, sid = idle_search
    tokens = tmp_path / "tokens.jsonl"
    assert arl("token", "add", "alice", tmp_path=tmp_path).returncode == 0
    assert oct(tokens.stat().st_mode & 0o777) == "0o600"
    tokens.chmod(0o664)
    done = arl("mcp", "--store", url, "--search", sid, "--specialist", "fit", "--transport", "http",
               tmp_path=tmp_path)
    assert done.returncode == 2 and "can be written by others" in done.stderr
    tokens.chmod(0o600)
    real = tmp_path / "real.jsonl"
    tokens.rename(real)
    tokens.symlink_to(real)
    done = arl("token", "list", tmp_path=tmp_path)
    assert done.returncode == 2 and "not a link" in done.stderr


def test_submits_are_rate_limited_per_token(search, tmp_path):
    url, sid = search
    proc, endpoint, log = start_http(url, sid, tmp_path, "--submit-rate", "1")
    try:
        async def twice() -> tuple[dict, types.CallToolResult]:
            async with http_session(endpoint, first_token(log)) as s:
                await _call(s, "wait", {"trial": "baseline", "timeout_s": 120})
                first = await _call(s, "submit", {"hypothesis": "honest fit", "edits": HONEST})
                second = await s.call_tool("submit", {"hypothesis": "again", "edits": [
                    {"file": "train.py", "search": "NOISE = 0.01", "replace": "NOISE = 0.0"}]})
                return first, second

        first, second = anyio.run(twice)
        assert first["status"] == "submitted"
        assert second.is_error and "submit rate limit: at most 1 submissions a minute for fit" in second.content[0].text
        with Ledger.open(url, read_only=True) as ledger:
            proposals = [e for _, e in ledger.iter_events() if type(e).__name__ == "TrialProposed"]
        assert len(proposals) == 2  # the baseline and the first submission; the refused one left no trace
    finally:
        stop(proc)


def test_waits_are_bounded_and_sql_answers_while_dozens_are_pending(idle_search, tmp_path):
    url, sid = idle_search
    proc, endpoint, log = start_http(url, sid, tmp_path, "--session-waits", "4", "--max-waits", "48")
    token = first_token(log)
    try:
        async def script() -> dict:
            returned: list = []

            async def wait_long(session: ClientSession) -> None:
                returned.append(await session.call_tool("wait", {"trial": "baseline", "timeout_s": 120}))

            async with AsyncExitStack() as stack:
                sessions = [await stack.enter_async_context(http_session(endpoint, token)) for _ in range(12)]
                probe = await stack.enter_async_context(http_session(endpoint, token))
                async with anyio.create_task_group() as tg:
                    for s in sessions:  # 12 sessions x 4 waits: the server's 48
                        for _ in range(4):
                            tg.start_soon(wait_long, s)
                    with anyio.fail_after(60):
                        while True:  # until the server says all 48 are in
                            over = await probe.call_tool("wait", {"trial": "baseline", "timeout_s": 0.1})
                            if over.is_error:
                                break
                    out = {"over_server": over,
                           "over_session": await sessions[0].call_tool("wait", {"trial": "baseline",
                                                                                "timeout_s": 120}),
                           "sql": await _call(probe, "sql", {"query": "SELECT seq, state FROM trials"}),
                           "lineage": await _call(probe, "lineage", {}),
                           "returned": len(returned)}
                    tg.cancel_scope.cancel()
            return out  # closing the sessions ended their waits on the server

        out = anyio.run(script)
        assert "48 wait calls pending" in out["over_server"].content[0].text
        assert out["over_session"].is_error and "4 wait calls pending" in out["over_session"].content[0].text
        assert out["sql"]["rows"] == [[0, "submitted"]] and out["lineage"]["budget"]["trials"] == 5
        assert out["returned"] == 0  # sql and lineage answered while every wait was still waiting

        async def again() -> dict:
            async with http_session(endpoint, token) as s:
                return await _call(s, "wait", {"trial": "baseline", "timeout_s": 0.5})

        deadline = time.monotonic() + 60
        while True:  # the closed sessions' waits are given back
            try:
                assert anyio.run(again)["timed_out"] is True
                break
            except AssertionError:
                assert time.monotonic() < deadline, "the waits of closed sessions were never given back"
                time.sleep(0.5)
    finally:
        stop(proc)


def test_sql_has_a_statement_timeout_and_an_offset_cap_over_mcp(idle_search, tmp_path):
    url, sid = idle_search
    proc, endpoint, log = start_http(url, sid, tmp_path)
    try:
        async def script() -> tuple:
            async with http_session(endpoint, first_token(log)) as s:
                endless = await s.call_tool("sql", {"query": "SELECT count(*) FROM range(1000000000000::BIGINT)"})
                far = await s.call_tool("sql", {"query": "SELECT * FROM range(100000)", "offset": 50_000})
                fine = await _call(s, "sql", {"query": "SELECT 41 + 1 AS x"})
                return endless, far, fine

        endless, far, fine = anyio.run(script)
        assert endless.is_error and "statement timeout" in endless.content[0].text
        assert far.is_error and "furthest a page may start (10000)" in far.content[0].text
        assert fine["rows"] == [[42]]
    finally:
        stop(proc)
