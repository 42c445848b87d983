"""Bearer tokens for arl's network interfaces (``arl mcp --transport http``, ``arl serve``).

A token is 32 random bytes written as ``arl_<base64url>``. It is shown once,
when it is made; the token file keeps only its sha256, with a name (the
identity recorded with what the token does) and, optionally, the one
specialist it may act as. A token can also come from the environment
(``ARL_TOKEN``: not bound, named ``env``). Checking a presented token hashes
it and compares the digest with every stored one in constant time.

    file = TokenFile(default_token_file())
    secret = file.add("alice", specialist="opt")    # print it once; it is not kept
    gate = TokenGate.load(file)                     # or server_gate(host, …): makes one on first start
    app = RequireToken(asgi_app, gate)              # 401 without a valid token
    # inside: scope["arl.credential"] is the Credential (name, specialist)

The token file must be a regular file (not a link) that only its owner can
write: whoever can write it can let anyone in. A gate loaded from the file
looks at it again before each check and reloads it when it changed, so a
token revoked (or added) takes effect at a running server's next request; a
file that stops being trustworthy lets none of its tokens in until it is fixed.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import re
import secrets
import socket
import stat
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import msgspec

from arl.ledger.errors import ArlError

TOKEN_PREFIX = "arl_"
#: A token given in the environment (accepted besides the file's; named "env", bound to no specialist).
ENV_TOKEN = "ARL_TOKEN"
#: The token file to use instead of the default one.
ENV_TOKEN_FILE = "ARL_TOKENS"
#: Where the credential of an authenticated request is put in its ASGI scope.
SCOPE_KEY = "arl.credential"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


class TokenError(ArlError):
    """A token or the token file cannot be used; the message names it and the fix."""


class Credential(msgspec.Struct, frozen=True, kw_only=True):
    """Who a valid token says the caller is."""

    name: str
    #: The one specialist this token may act as (None: whichever the server serves).
    specialist: str | None = None


class TokenRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One line of the token file: a token's digest and what it is for (never the token)."""

    name: str
    #: Checked when the file is read: a line that is not a digest is the file's error,
    #: never a crash of the check that reads it.
    sha256: Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]
    specialist: str | None = None
    created_at: str = ""


def default_token_file() -> Path:
    """``$ARL_TOKENS``, else ``$XDG_CONFIG_HOME/arl/tokens.jsonl`` (``~/.config/arl/tokens.jsonl``)."""
    if os.environ.get(ENV_TOKEN_FILE):
        return Path(os.environ[ENV_TOKEN_FILE]).expanduser()
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "arl" / "tokens.jsonl"


def digest_of(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenFile:
    """The file of token digests (JSON lines), created 0600 and never read through a link."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path).expanduser()

    def signature(self) -> tuple[int, ...] | None:
        """What tells a changed file from the one read before (None: no file); never follows a link."""
        try:
            info = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as e:
            return (-1, e.errno or 0)
        return (info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size, info.st_mode, info.st_uid)

    def records(self) -> list[TokenRecord]:
        """Every token of the file ([] when there is no file yet)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return []
        except OSError as e:
            raise TokenError(f"cannot read the token file {self.path}: {e.strerror}; it must be a regular "
                             "file (not a link) — remove it to start afresh") from e
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            self._check_owner(info)
            try:
                text = f.read().decode(errors="replace")
            except OSError as e:
                raise TokenError(f"cannot read the token file {self.path}: {e.strerror}") from e
        out = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                out.append(msgspec.json.decode(line, type=TokenRecord))
            except msgspec.DecodeError as e:
                raise TokenError(f"{self.path} line {n} is not a token record ({e}); "
                                 "fix or remove that line") from None
        return out

    def _check_owner(self, info: os.stat_result) -> None:
        if not stat.S_ISREG(info.st_mode):
            raise TokenError(f"the token file {self.path} is not a regular file; remove it to start afresh")
        if info.st_uid != os.geteuid():
            raise TokenError(f"the token file {self.path} belongs to another user (uid {info.st_uid}); "
                             "use a token file of your own (--token-file or ARL_TOKENS)")
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise TokenError(f"the token file {self.path} can be written by others, who could let anyone in; "
                             f"chmod 600 {self.path}")

    def add(self, name: str, *, specialist: str | None = None) -> str:
        """Make a token, keep its digest under ``name``; returns the token (show it once)."""
        if not _NAME.fullmatch(name):
            raise TokenError(f"token name {name!r}: use letters, digits and ._@- (at most 64), "
                             "e.g. alice or opt-agent")
        records = self.records()
        if any(r.name == name for r in records):
            raise TokenError(f"{self.path} already has a token named {name!r}; choose another name "
                             f"or `arl token revoke {name}` first")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        record = TokenRecord(name=name, sha256=digest_of(token), specialist=specialist,
                             created_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        self._write([*records, record])
        return token

    def revoke(self, name: str) -> None:
        records = self.records()
        kept = [r for r in records if r.name != name]
        if len(kept) == len(records):
            raise TokenError(f"{self.path} has no token named {name!r}; `arl token list` names them")
        self._write(kept)

    def _write(self, records: Sequence[TokenRecord]) -> None:
        """Replace the file atomically: a new 0600 file (O_EXCL|O_NOFOLLOW) renamed over it."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            raise TokenError(f"cannot create {self.path.parent}: {e.strerror}; give another --token-file") from e
        tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:12]}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as f:
                for r in records:
                    f.write(msgspec.json.encode(r) + b"\n")
            os.replace(tmp, self.path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise TokenError(f"cannot write the token file {self.path}: {e.strerror}") from e


class TokenGate:
    """Answers "which credential is this token?" without keeping a single token.

    Given the ``file`` its records came from, it looks at the file again before each
    check (one ``stat``) and reloads it when it changed: a revoked token is refused
    from the next request on, without a restart. A file that can no longer be trusted
    (a link, writable by others, another owner, a line that is not a record) lets none
    of its tokens in until it is fixed, and says so once on stderr; ``ARL_TOKEN`` still works.
    """

    def __init__(self, records: Iterable[TokenRecord], *, env_token: str | None = None,
                 file: TokenFile | None = None, seen: tuple[int, ...] | None = None) -> None:
        self._env = ([(bytes.fromhex(digest_of(env_token)), Credential(name="env"))] if env_token else [])
        self._file = file
        self._seen = seen
        self._entries = self._with_env(records)

    def _with_env(self, records: Iterable[TokenRecord]) -> list[tuple[bytes, Credential]]:
        return [(bytes.fromhex(r.sha256), Credential(name=r.name, specialist=r.specialist))
                for r in records] + self._env

    @classmethod
    def load(cls, file: TokenFile, *, environ: Mapping[str, str] | None = None) -> TokenGate:
        """The file's tokens, plus ``ARL_TOKEN`` when set; reloaded whenever the file changes."""
        env = os.environ if environ is None else environ
        seen = file.signature()  # before reading: a change made while reading is seen next time
        return cls(file.records(), env_token=env.get(ENV_TOKEN) or None, file=file, seen=seen)

    def _refresh(self) -> None:
        if self._file is None:
            return
        seen = self._file.signature()
        if seen == self._seen:
            return
        self._seen = seen
        try:
            self._entries = self._with_env(self._file.records())
        except Exception as e:  # whatever went wrong, none of the file's tokens: fail closed
            self._entries = list(self._env)
            print(f"arl: {e} — refusing every token of that file until it is fixed",
                  file=sys.stderr, flush=True)

    def __len__(self) -> int:
        return len(self._entries)

    def authenticate(self, presented: str | None) -> Credential | None:
        """The credential of a presented token, or None. Constant time in the token's value:
        every stored digest is compared (hmac.compare_digest), whichever matches."""
        if not presented:
            return None
        self._refresh()
        digest = hashlib.sha256(presented.encode()).digest()
        found: Credential | None = None
        for stored, credential in self._entries:
            if hmac.compare_digest(stored, digest):
                found = credential
        return found


def bearer_token(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The token of an ``Authorization: Bearer …`` header in raw ASGI headers, if any."""
    for key, value in headers:
        if key.lower() == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


ASGIApp = Callable[[dict[str, Any], Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]],
                   Awaitable[None]]


class RequireToken:
    """ASGI middleware: every HTTP request needs a valid bearer token, else 401 and nothing else.

    ``admit(credential)`` may refuse a valid token (403, its return value the
    reason: e.g. a token bound to another specialist). The credential of an
    admitted request is ``scope["arl.credential"]``.
    """

    def __init__(self, app: ASGIApp, gate: TokenGate, *,
                 admit: Callable[[Credential], str | None] | None = None, realm: str = "arl") -> None:
        self.app = app
        self.gate = gate
        self.admit = admit
        self.realm = realm

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] not in ("http", "websocket"):  # lifespan: no request, no credential
            await self.app(scope, receive, send)
            return
        credential = self.gate.authenticate(bearer_token(scope.get("headers") or ()))
        if credential is None:
            await _refuse(send, 401, "invalid_token",
                          "a valid bearer token is required (Authorization: Bearer arl_…); "
                          "`arl token add NAME` makes one", realm=self.realm)
            return
        refusal = self.admit(credential) if self.admit else None
        if refusal:
            await _refuse(send, 403, "insufficient_scope", refusal, realm=self.realm)
            return
        scope[SCOPE_KEY] = credential
        await self.app(scope, receive, send)


async def _refuse(send: Callable, status: int, error: str, description: str, *, realm: str) -> None:
    body = json.dumps({"error": error, "error_description": description}).encode()
    challenge = f'Bearer realm="{realm}", error="{error}"'
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"www-authenticate", challenge.encode())]})
    await send({"type": "http.response.body", "body": body})


def server_gate(host: str, *, token_file: Path | str | None = None, no_auth: bool = False,
                first_token: str, specialist: str | None = None,
                announce: Callable[[str, Path], None]) -> TokenGate | None:
    """The tokens a server listening on ``host`` accepts.

    ``no_auth`` (None: no check) is allowed on a loopback address only. On a first
    start — no token in the file, none in ``ARL_TOKEN`` — one token named
    ``first_token`` (bound to ``specialist``, if given) is made and handed to
    ``announce(token, file)`` to be shown once.
    """
    if no_auth:
        if not is_loopback(host):
            raise TokenError(f"--no-auth on {host}: only a loopback address (127.0.0.1, ::1) may be served "
                             "without tokens; drop --no-auth (clients then need a token) or bind 127.0.0.1")
        return None
    file = TokenFile(token_file or default_token_file())
    gate = TokenGate.load(file)
    if len(gate) == 0:
        announce(file.add(first_token, specialist=specialist), file.path)
        gate = TokenGate.load(file)
    return gate


# --- where a server may listen, and which Host headers it answers ------------------------------


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_hosts(bind: str, extra: Sequence[str] = ()) -> list[str]:
    """The Host header values a server bound to ``bind`` answers (DNS-rebinding protection).

    Loopback names always; for a wildcard bind (0.0.0.0, ::) also this machine's
    name, full name and addresses; for a named address, that one; and ``extra``.
    """
    names = ["127.0.0.1", "localhost", "[::1]"]
    if not is_loopback(bind):
        if bind in ("0.0.0.0", "::", ""):
            machine = {socket.gethostname(), socket.getfqdn()}
            names += sorted(machine)
            for name in machine:
                try:
                    names += sorted({_bracketed(info[4][0]) for info in socket.getaddrinfo(name, None)})
                except OSError:
                    continue
        else:
            names.append(_bracketed(bind))
    names += [_bracketed(h) for h in extra]
    return list(dict.fromkeys(names))


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
