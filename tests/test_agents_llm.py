"""The llm backend against a real HTTP server that plays scripted model replies.

Every reply a model (or a broken server) can give becomes a proposal with a
program or a labelled rejection, and every call leaves a blob with the request
and what came back.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import msgspec
import pytest

from arl.tasks import legality
from arl.agents.lineage import LineageView, TrialLine
from arl.agents.llm import (
    ChatCall,
    ChatClient,
    LLMSpecialist,
    LLMMisconfigured,
    LLMUnavailable,
    ReplayClient,
    endpoint_base,
)
from arl.ledger import Ledger
from arl.ledger.errors import ArlError
from arl.ledger.events import Label
from arl.ledger.programs import read_folder
from arl.tasks.manifest import load_task


def scope_violation(task, surface, parent, child, also=()):
    """legality.scope as (label, reason), None when the edit is in scope."""
    found = legality.scope(task, surface, parent, child, also=also)
    return None if found.passed else (found.label, found.detail)

TINY = Path(__file__).resolve().parent / "tasks" / "tiny"


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    #: Seconds to hold the reply back (released early when the test ends).
    delay: float = 0.0


def chat(content: str, finish_reason: str = "stop") -> Reply:
    """A well-formed OpenAI chat completion carrying ``content``."""
    return Reply(body=json.dumps({
        "id": "chatcmpl-1", "object": "chat.completion", "model": "scripted",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": 321, "completion_tokens": 45, "total_tokens": 366},
    }).encode())


class ScriptedServer:
    """An OpenAI-shaped HTTP server on 127.0.0.1 that answers from a script, in order."""

    def __init__(self) -> None:
        self.script: deque[Reply] = deque()
        self.requests: list[dict] = []
        self.headers: list[dict[str, str]] = []
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("content-length", 0))
                server.requests.append(json.loads(self.rfile.read(length)))
                server.headers.append({k.lower(): v for k, v in self.headers.items()})
                reply = server.script.popleft() if server.script else Reply(status=500, body=b"script empty")
                if reply.delay:
                    server.release.wait(reply.delay)
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(reply.body)))
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(reply.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (read timeout): that is the case under test

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def play(self, *replies: Reply) -> None:
        self.script.extend(replies)

    def stop(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    s = ScriptedServer()
    yield s
    s.stop()


@pytest.fixture
def task():
    return load_task(TINY)


@pytest.fixture
def ledger(tmp_path) -> Iterator[Ledger]:
    with Ledger.open(f"sqlite:///{tmp_path / 'l.db'}") as led:
        yield led


@pytest.fixture
def view(task) -> LineageView:
    best = TrialLine(seq=0, trial_id="t-best", agent="baseline", surface="", hypothesis="",
                     label="baseline", score=0.52, delta_vs_best=None, reason="")
    return LineageView(
        search_id="s", task="tiny", metric="mse", direction="min", noise_floor=0.02,
        specialist="fit", surface="fit", lineage=True, baseline_score=0.52, best=best,
        best_program=read_folder(task.recipe_dir),
    )


def client(server: ScriptedServer, **kw) -> ChatClient:
    kw.setdefault("backoff_s", 0.01)
    return ChatClient(server.url, "scripted", **kw)


def specialist(task, ledger, c) -> LLMSpecialist:
    return LLMSpecialist("fit", "fit", task, c, ledger.put_blob)


def recorded(ledger: Ledger, digest: str | None) -> ChatCall:
    assert digest is not None
    return msgspec.json.decode(ledger.get_blob(digest), type=ChatCall)


GOOD_JSON = json.dumps({
    "hypothesis": "The shrinkage biases the slope; fit it honestly.",
    "expected_delta": -0.3,
    "edits": [{"file": "train.py", "search": "SHRINK = 0.8", "replace": "SHRINK = 1.0"}],
})


def test_json_edits_in_a_fence_become_a_program_and_the_call_is_recorded(server, task, ledger, view):
    server.play(chat(f"Sure! Here is my proposal:\n```json\n{GOOD_JSON}\n```\nGood luck."))
    with client(server) as c:
        p = specialist(task, ledger, c).propose(view)

    assert p.rejected is None
    assert p.program is not None
    assert b"SHRINK = 1.0        # multiplies" in p.program["train.py"]
    assert p.program["NOTES.md"] == view.best_program["NOTES.md"]
    assert (p.hypothesis, p.expected_delta, p.parents) == (
        "The shrinkage biases the slope; fit it honestly.", -0.3, ("t-best",))
    assert (p.agent, p.surface, p.backend) == ("fit", "fit", "llm")
    assert scope_violation(task, "fit", view.best_program, p.program) is None

    call = recorded(ledger, p.agent_call_digest)
    assert call.backend == "llm" and call.model == "scripted"
    assert call.url == server.url + "/v1/chat/completions"
    assert call.request == server.requests[0]
    assert call.response is not None and call.text.startswith("Sure!")
    assert (call.usage.prompt_tokens, call.usage.completion_tokens, call.usage.total_tokens) == (321, 45, 366)
    assert call.attempts == 1 and call.error is None

    system, user = call.request["messages"]
    assert system["role"] == "system" and "You are the fit specialist" in system["content"]
    assert "Fit a line to noisy points" in system["content"]
    assert "mse, lower is better" in system["content"]
    assert "training 2.5 s" in system["content"] and "data_spec.py" in system["content"]
    assert "SHRINK in train.py (float, 0..1.5)" in system["content"]
    # Only the surface's files are shown, then the lineage view.
    assert "## train.py" in user["content"] and "def main():" in user["content"]
    assert "NOTES.md" not in user["content"] and "TRAIN_FILE =" not in user["content"]
    assert "Current best: trial 0 by baseline, mse = 0.52" in user["content"]


def test_a_unified_diff_reply_becomes_a_program(server, task, ledger, view):
    server.play(chat(
        "Hypothesis: less shrinkage lowers the held-out error.\n\n"
        "```diff\n"
        "--- a/train.py\n+++ b/train.py\n"
        "@@ -12,3 +12,3 @@\n"             # wrong line numbers, as models write them
        " \n"
        "-SHRINK = 0.8        # multiplies the fitted slope (1.0 is the honest fit)\n"
        "+SHRINK = 0.95       # closer to the honest fit\n"
        " NOISE = 0.01        # seed-dependent jitter on the slope\n"
        "```\n"
    ))
    with client(server) as c:
        p = specialist(task, ledger, c).propose(view)
    assert p.rejected is None and p.program is not None
    assert b"\nSHRINK = 0.95       # closer to the honest fit\nNOISE = 0.01" in p.program["train.py"]
    assert p.hypothesis == "less shrinkage lowers the held-out error."
    assert p.expected_delta is None
    assert recorded(ledger, p.agent_call_digest).text.startswith("Hypothesis:")


@pytest.mark.parametrize(
    "content, finish, reason, hypothesis",
    [
        ("I like turtles. {not json} at all", "stop", "unparseable reply: invalid or partial JSON",
         "(unparseable reply)"),
        ("", "stop", "empty reply from the model", "(unparseable reply)"),
        ('{"hypothesis": "shrink less", "expected_delta": -0.1, "edits": [{"file": "train.py", '
         '"search": "SHRINK = 0.8", "repl', "length",
         "unparseable reply: invalid or partial JSON", "shrink less"),
        ('{"hypothesis": "go up", "edits": [{"file": "train.py", "search": "SHRINK = 7", "replace": "x"}]}',
         "stop", "block 1 of train.py: the search text is not found", "go up"),
        ('{"hypothesis": "escape", "edits": [{"file": "../evil.py", "search": "", "replace": "x"}]}',
         "stop", "path traversal: '../evil.py'", "escape"),
        ("Hypothesis: absolute\n```diff\n--- /etc/passwd\n+++ /etc/passwd\n@@ -1 +1 @@\n-root\n+me\n```",
         "stop", "path traversal: '/etc/passwd'", "absolute"),
        ('{"hypothesis": "nothing to do"}', "stop", "the reply has no edits", "nothing to do"),
        ('{"hypothesis": "odd", "edits": "change SHRINK"}', "stop", "'edits' is not a list", "odd"),
    ],
    ids=["garbage", "empty", "partial-json-cut", "search-absent", "dotdot", "absolute-diff",
         "no-edits", "edits-not-list"],
)
def test_bad_replies_become_invalid_edit_rejections(server, task, ledger, view, content, finish, reason,
                                                    hypothesis):
    server.play(chat(content, finish_reason=finish))
    with client(server) as c:
        p = specialist(task, ledger, c).propose(view)
    assert p.program is None
    assert p.rejected is not None
    label, why = p.rejected
    assert label is Label.INVALID_EDIT
    assert why.startswith(reason) and "\n" not in why
    if finish == "length":
        assert "cut at max_tokens" in why
    assert p.hypothesis == hypothesis
    call = recorded(ledger, p.agent_call_digest)
    assert call.request == server.requests[0] and call.text == content


@pytest.mark.parametrize(
    "file, label",
    [("NOTES.md", Label.OUT_OF_SURFACE), ("data_spec.py", Label.ILLEGAL_EDIT)],
)
def test_edits_to_other_files_are_left_to_the_scope_check(server, task, ledger, view, file, label):
    target = {"NOTES.md": "Notes about the tiny recipe.", "data_spec.py": "TRAIN_FILE"}[file]
    server.play(chat(json.dumps({"hypothesis": "h", "edits": [
        {"file": "train.py", "search": "NOISE = 0.01", "replace": "NOISE = 0.0"},
        {"file": file, "search": target, "replace": target + " (edited)"},
    ]})))
    with client(server) as c:
        p = specialist(task, ledger, c).propose(view)
    assert p.rejected is None and p.program is not None
    violation = scope_violation(task, "fit", view.best_program, p.program)
    assert violation is not None and violation[0] is label and file in violation[1]


def test_a_huge_reply_is_cut_off_and_labelled(server, task, ledger, view):
    server.play(chat("x" * 200_000))
    with client(server, max_reply_bytes=64 * 1024) as c:
        p = specialist(task, ledger, c).propose(view)
    assert p.program is None and p.rejected is not None
    assert p.rejected[0] is Label.INVALID_EDIT
    assert "over 65536 bytes" in p.rejected[1]
    call = recorded(ledger, p.agent_call_digest)
    assert call.error == p.rejected[1] and call.error_kind == "too_large"
    assert call.request == server.requests[0]


def test_429_is_retried_after_the_servers_retry_after(server, task, ledger, view):
    server.play(Reply(status=429, body=b'{"error": "slow down"}', headers={"Retry-After": "1"}),
                chat(GOOD_JSON))
    with client(server) as c:
        p = specialist(task, ledger, c).propose(view)
    assert p.rejected is None and p.program is not None
    assert len(server.requests) == 2 and server.requests[0] == server.requests[1]
    call = recorded(ledger, p.agent_call_digest)
    assert call.attempts == 2
    assert [(r.attempt, r.wait_s) for r in call.retries] == [(1, 1.0)]
    assert call.retries[0].reason.startswith("HTTP 429")
    assert call.seconds >= 1.0


def test_5xx_until_the_attempts_run_out_is_an_infra_error(server, task, ledger, view):
    server.play(*[Reply(status=500, body=b"internal error") for _ in range(3)])
    with client(server, max_attempts=3) as c:
        p = specialist(task, ledger, c).propose(view)
    assert p.program is None and p.rejected is not None
    label, why = p.rejected
    assert label is Label.INFRA_ERROR and not label.charged
    assert "\n" not in why
    assert why.startswith(f"the model server at {server.url}/v1/chat/completions failed 3 attempt(s)")
    assert "HTTP 500: internal error" in why and "--llm-url" in why
    assert len(server.requests) == 3
    call = recorded(ledger, p.agent_call_digest)
    assert call.attempts == 3 and len(call.retries) == 2
    assert call.error == why and call.error_kind == "unavailable"
    assert [r.reason for r in call.retries] == ["HTTP 500: internal error"] * 2
    assert call.response == {"body": "internal error"}
    # Backoff grows: the second wait is drawn from twice the first one's range.
    assert 0.005 <= call.retries[0].wait_s <= 0.01 and 0.01 <= call.retries[1].wait_s <= 0.02


def test_a_reply_slower_than_the_read_timeout_is_retried_then_an_infra_error(server, task, ledger, view):
    server.play(Reply(delay=30, body=b"{}"), Reply(delay=30, body=b"{}"))
    with client(server, read_timeout_s=0.3, max_attempts=2) as c:
        p = specialist(task, ledger, c).propose(view)
    assert p.rejected is not None
    label, why = p.rejected
    assert label is Label.INFRA_ERROR
    assert "no reply within the read timeout of 0.3 s" in why
    call = recorded(ledger, p.agent_call_digest)
    assert call.attempts == 2 and call.response is None and len(server.requests) == 2


def test_other_http_errors_fail_at_once_with_the_fix(server, monkeypatch):
    server.play(Reply(status=401, body=b'{"error": "bad key"}'))
    monkeypatch.setenv("ARL_LLM_API_KEY", "sk-test-123")
    with client(server) as c, pytest.raises(LLMUnavailable) as err:
        c.complete([{"role": "user", "content": "hi"}])
    assert "refused the request (HTTP 401" in str(err.value)
    assert "set ARL_LLM_API_KEY" in str(err.value)
    assert len(server.requests) == 1
    assert server.headers[0]["authorization"] == "Bearer sk-test-123"
    # The key is sent, never recorded.
    assert "sk-test-123" not in msgspec.json.encode(err.value.call).decode()


def test_no_key_no_authorization_header(server, monkeypatch):
    monkeypatch.delenv("ARL_LLM_API_KEY", raising=False)
    server.play(chat("hello"))
    with client(server) as c:
        call = c.complete([{"role": "user", "content": "hi"}])
    assert call.text == "hello" and "authorization" not in server.headers[0]
    assert server.requests[0] == {"model": "scripted", "messages": [{"role": "user", "content": "hi"}],
                                  "max_tokens": 2048, "temperature": 0.7}


def test_a_reply_that_is_not_json_is_an_infra_error(server, task, ledger, view):
    server.play(Reply(body=b"<html>proxy login</html>"))
    with client(server) as c:
        p = specialist(task, ledger, c).propose(view)
    assert p.rejected is not None and p.rejected[0] is Label.INFRA_ERROR
    assert "not a JSON object (<html>proxy login</html>)" in p.rejected[1]


def test_an_unreachable_server_is_one_line_naming_the_url_and_the_fix(task, ledger, view):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with ChatClient(f"http://127.0.0.1:{port}", "m", max_attempts=2, backoff_s=0.01) as c:
        with pytest.raises(LLMUnavailable) as err:
            c.complete([{"role": "user", "content": "hi"}])
        message = str(err.value)
        assert message.startswith(f"the model server at http://127.0.0.1:{port}/v1/chat/completions "
                                  "failed 2 attempt(s), last: cannot connect")
        assert "check that it is running and the --llm-url" in message and "\n" not in message
        p = specialist(task, ledger, c).propose(view)
    assert p.rejected is not None and p.rejected[0] is Label.INFRA_ERROR
    assert "last: cannot connect" in recorded(ledger, p.agent_call_digest).error


@pytest.mark.parametrize(
    "url, base",
    [("http://h:8080", "http://h:8080/v1"), ("http://h:8080/v1/", "http://h:8080/v1"),
     ("https://api.x.com/v1/chat/completions", "https://api.x.com/v1"),
     ("http://h:11434/", "http://h:11434/v1")],
)
def test_endpoint_base(url, base):
    assert endpoint_base(url) == base


def test_endpoint_base_refuses_non_http():
    with pytest.raises(ArlError, match="is not an http"):
        endpoint_base("localhost:8080")


def test_replay_gives_the_same_proposals_and_blobs_without_a_model(server, task, ledger, view):
    server.play(chat(GOOD_JSON), chat("garbage"), Reply(status=503, body=b"down"))
    with client(server, max_attempts=1) as c:
        live = [specialist(task, ledger, c).propose(view) for _ in range(3)]
    assert [p.rejected[0] if p.rejected else None for p in live] == [
        None, Label.INVALID_EDIT, Label.INFRA_ERROR]
    asked = len(server.requests)

    replay = ReplayClient(ledger.get_blob, [p.agent_call_digest for p in live])
    again = [specialist(task, ledger, replay).propose(view) for _ in range(3)]
    assert len(server.requests) == asked  # no model was called
    assert [msgspec.to_builtins(p) for p in again] == [msgspec.to_builtins(p) for p in live]
    assert replay.diverged == 0 and replay.url == server.url + "/v1/chat/completions"

    exhausted = specialist(task, ledger, replay).propose(view)
    assert exhausted.rejected is not None and "no more recorded calls" in exhausted.rejected[1]


def test_a_retry_after_past_the_deadline_gives_up_at_once(server):
    server.play(Reply(status=429, body=b"busy", headers={"Retry-After": "120"}))
    with client(server, deadline_s=5) as c, pytest.raises(LLMUnavailable) as err:
        c.complete([{"role": "user", "content": "hi"}])
    assert "the server asked for 120.0 s more, past the call deadline of 5 s" in str(err.value)
    assert len(server.requests) == 1 and err.value.call.retries == []


def _too_small(context: int, prompt: int, reply: int) -> Reply:
    """The OpenAI-style refusal llama.cpp's server and vLLM give for a prompt over the context."""
    message = (f"This model's maximum context length is {context} tokens. However, you requested "
               f"{prompt + reply} tokens ({prompt} in the messages, {reply} in the completion). "
               "Please reduce the length of the messages or completion.")
    return Reply(status=400, body=json.dumps({"error": {"message": message, "type": "invalid_request_error",
                                                        "code": "context_length_exceeded"}}).encode())


def test_a_prompt_over_the_context_is_fitted_once_from_what_the_server_said(server, task, ledger, view):
    # Long lineage: the part of the prompt that may be cut.
    view.mine = [TrialLine(seq=i, trial_id=f"t{i}", agent="fit", surface="fit", hypothesis="x" * 300,
                          label="discard", score=0.6, delta_vs_best=0.08, reason="r" * 200) for i in range(1, 30)]
    full = sum(len(m["content"]) for m in specialist(task, ledger, client(server)).messages(view, view.best_program))
    prompt_tokens = full // 3
    server.play(_too_small(context=prompt_tokens // 2, prompt=prompt_tokens, reply=2048), chat(GOOD_JSON))
    sp = specialist(task, ledger, client(server))
    p = sp.propose(view)
    assert p.program is not None and p.rejected is None
    first, second = server.requests
    assert first["max_tokens"] == 2048 and second["max_tokens"] < 2048
    sent = second["messages"][1]["content"]
    assert "lineage cut to fit the model's context" in sent and len(sent) < len(first["messages"][1]["content"])
    assert second["messages"][0] == first["messages"][0]  # the role is never cut
    # The next proposal is fitted before it is sent: no second refusal.
    server.play(chat(GOOD_JSON))
    sp.propose(view)
    assert len(server.requests) == 3 and "lineage cut" in server.requests[2]["messages"][1]["content"]


def test_a_context_too_small_for_the_files_stops_the_search_with_one_line(server, task, ledger, view):
    server.play(_too_small(context=300, prompt=1700, reply=2048))
    with pytest.raises(LLMMisconfigured) as err:
        specialist(task, ledger, client(server)).propose(view)
    assert "has a context of 300 tokens" in str(err.value) and "--n_ctx" in str(err.value)
    assert len(server.requests) == 1  # what cannot fit is not asked again


def test_a_refusal_that_retrying_cannot_change_is_not_a_proposal(server, task, ledger, view):
    server.play(Reply(status=404, body=b'{"error": {"message": "model scripted not found"}}'))
    with pytest.raises(LLMMisconfigured, match="refused the request .HTTP 404.*check --llm-url"):
        specialist(task, ledger, client(server)).propose(view)
