"""Bearer tokens: made once, kept as hashes, checked against every stored digest; the server's limits."""

from __future__ import annotations

import json

import anyio
import httpx
import pytest

from arl.runners.mcp_server import SubmitRate, WaitSlots
from arl.runners.tokens import (
    Credential,
    RequireToken,
    TokenError,
    TokenFile,
    TokenGate,
    allowed_hosts,
    bearer_token,
    is_loopback,
)
from mcp.server.mcpserver.exceptions import ToolError


def test_a_token_is_shown_once_and_kept_as_its_hash(tmp_path):
    file = TokenFile(tmp_path / "cfg" / "tokens.jsonl")
    token = file.add("alice", specialist="opt")
    assert token.startswith("arl_") and len(token) > 40
    text = file.path.read_text()
    assert token not in text and json.loads(text)["name"] == "alice"
    assert oct(file.path.stat().st_mode & 0o777) == "0o600"
    gate = TokenGate.load(file, environ={})
    assert gate.authenticate(token) == Credential(name="alice", specialist="opt")
    for wrong in (None, "", token[:-1], token + "x", "arl_" + "A" * 43, token.upper()):
        assert gate.authenticate(wrong) is None
    with pytest.raises(TokenError, match="already has a token named 'alice'"):
        file.add("alice")
    with pytest.raises(TokenError, match="token name"):
        file.add("../etc")
    file.revoke("alice")
    assert TokenGate.load(file, environ={}).authenticate(token) is None


def test_the_environment_token_is_accepted_unbound(tmp_path):
    gate = TokenGate.load(TokenFile(tmp_path / "none.jsonl"), environ={"ARL_TOKEN": "s3cret-from-env"})
    assert gate.authenticate("s3cret-from-env") == Credential(name="env")
    assert gate.authenticate("s3cret-from-en") is None and len(gate) == 1


def test_a_token_file_others_can_write_or_a_link_is_refused(tmp_path):
    file = TokenFile(tmp_path / "tokens.jsonl")
    file.add("alice")
    file.path.chmod(0o666)
    with pytest.raises(TokenError, match="can be written by others"):
        file.records()
    file.path.chmod(0o600)
    (tmp_path / "link.jsonl").symlink_to(file.path)
    with pytest.raises(TokenError, match="not a link"):
        TokenFile(tmp_path / "link.jsonl").records()
    (tmp_path / "bad.jsonl").write_text("not json\n")
    (tmp_path / "bad.jsonl").chmod(0o600)
    with pytest.raises(TokenError, match="line 1 is not a token record"):
        TokenFile(tmp_path / "bad.jsonl").records()


def test_a_loaded_gate_follows_its_file_and_fails_closed(tmp_path, capsys):
    file = TokenFile(tmp_path / "tokens.jsonl")
    alice = file.add("alice")
    gate = TokenGate.load(file, environ={"ARL_TOKEN": "from-env"})
    assert gate.authenticate(alice) == Credential(name="alice")
    file.revoke("alice")  # by another process, as `arl token revoke` does: the next check refuses it
    assert gate.authenticate(alice) is None
    bob = file.add("bob", specialist="opt")
    assert gate.authenticate(bob) == Credential(name="bob", specialist="opt")
    # a file others can write lets none of its tokens in (ARL_TOKEN still does), and says so once
    file.path.chmod(0o666)
    assert gate.authenticate(bob) is None and gate.authenticate("from-env") == Credential(name="env")
    assert gate.authenticate(bob) is None
    assert capsys.readouterr().err.count("can be written by others") == 1
    file.path.chmod(0o600)
    assert gate.authenticate(bob) == Credential(name="bob", specialist="opt")
    # a link put where the file was: refused, never followed
    other = TokenFile(tmp_path / "other.jsonl")
    mallory = other.add("mallory")
    file.path.unlink()
    file.path.symlink_to(other.path)
    assert gate.authenticate(mallory) is None and gate.authenticate(bob) is None
    assert "not a link" in capsys.readouterr().err
    # the file removed: no file tokens at all
    file.path.unlink()
    assert gate.authenticate(bob) is None and gate.authenticate("from-env") == Credential(name="env")



def test_a_hand_edited_line_that_is_no_digest_revokes_the_file_not_keeps_it(tmp_path, capsys):
    # The owner revokes bob by hand and mistypes a new line: the old list must not live on.
    file = TokenFile(tmp_path / "tokens.jsonl")
    bob = file.add("bob")
    gate = TokenGate.load(file, environ={})
    assert gate.authenticate(bob) == Credential(name="bob")
    file.path.write_text(json.dumps({"name": "carol", "sha256": "not-hex"}) + "\n")
    assert gate.authenticate(bob) is None
    assert gate.authenticate(bob) is None  # and again: the signature seen must not bring it back
    err = capsys.readouterr().err
    assert err.count("line 1 is not a token record") == 1 and "until it is fixed" in err
    with pytest.raises(TokenError, match="line 1 is not a token record"):  # at start: one line, no traceback
        TokenGate.load(file, environ={})


def test_bearer_header_parsing():
    assert bearer_token([(b"authorization", b"Bearer abc")]) == "abc"
    assert bearer_token([(b"Authorization", b"bearer  abc ")]) == "abc"
    assert bearer_token([(b"authorization", b"Basic abc")]) is None
    assert bearer_token([(b"x-token", b"abc")]) is None


def test_require_token_lets_nothing_through_without_one(tmp_path):
    """The ASGI middleware in front of any app (what `arl serve` puts in front of its pages too)."""
    file = TokenFile(tmp_path / "tokens.jsonl")
    token = file.add("alice")
    reached: list = []

    async def app(scope, receive, send):
        reached.append(scope["arl.credential"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"inside"})

    guarded = RequireToken(app, TokenGate.load(file, environ={}),
                           admit=lambda c: "not today" if c.name == "mallory" else None)

    async def requests() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=guarded)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            return [await client.get("/"), await client.get("/", headers={"Authorization": "Bearer nope"}),
                    await client.get("/", headers={"Authorization": f"Bearer {token}"})]

    bare, wrong, good = anyio.run(requests)
    assert bare.status_code == wrong.status_code == 401 and "inside" not in bare.text + wrong.text
    assert good.status_code == 200 and good.text == "inside" and reached == [Credential(name="alice")]


def test_where_a_server_may_listen_and_which_hosts_it_answers():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.1.2.3")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.2") and not is_loopback("example.com")
    assert allowed_hosts("127.0.0.1") == ["127.0.0.1", "localhost", "[::1]"]
    assert allowed_hosts("10.0.0.2", ["gpu-box"]) == ["127.0.0.1", "localhost", "[::1]", "10.0.0.2", "gpu-box"]
    import socket

    assert socket.gethostname() in allowed_hosts("0.0.0.0")


def test_submit_rate_is_a_bucket_per_caller():
    now = [0.0]
    rate = SubmitRate(2, clock=lambda: now[0])
    rate.take("alice")
    rate.take("alice")
    with pytest.raises(ToolError, match=r"at most 2 submissions a minute for alice; retry in 30 s"):
        rate.take("alice")
    rate.take("bob")  # a bucket of its own
    now[0] = 30.0
    rate.take("alice")  # one refilled
    with pytest.raises(ToolError):
        rate.take("alice")
    SubmitRate(0).take("anyone")  # 0: no limit


def test_wait_slots_bound_sessions_and_the_server():
    slots = WaitSlots(per_session=2, total=3)
    slots.enter("a")
    slots.enter("a")
    with pytest.raises(ToolError, match="this session already has 2"):
        slots.enter("a")
    slots.enter("b")
    with pytest.raises(ToolError, match="the server has 3"):
        slots.enter("c")
    slots.leave("a")
    slots.enter("c")
    assert slots.pending() == 3


def test_a_server_gate_makes_one_token_on_first_start_and_refuses_open_non_loopback(tmp_path, monkeypatch):
    from arl.runners.tokens import server_gate

    monkeypatch.delenv("ARL_TOKEN", raising=False)
    shown: list = []
    file = tmp_path / "tokens.jsonl"
    gate = server_gate("0.0.0.0", token_file=file, first_token="opt", specialist="opt",
                       announce=lambda token, path: shown.append((token, path)))
    [(token, path)] = shown
    assert path == file and gate.authenticate(token) == Credential(name="opt", specialist="opt")
    again = server_gate("0.0.0.0", token_file=file, first_token="opt", announce=lambda *a: shown.append(a))
    assert len(shown) == 1 and again.authenticate(token) is not None  # shown once, kept as a hash
    assert server_gate("127.0.0.1", no_auth=True, first_token="x", announce=print) is None
    with pytest.raises(TokenError, match="only a loopback address"):
        server_gate("0.0.0.0", no_auth=True, first_token="x", announce=print)
