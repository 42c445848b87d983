"""``arl mcp``: the ledger tools as an MCP server, so any MCP client can be a specialist.

Claude Code, Codex or any other MCP-capable agent connects (stdio, or
streamable HTTP for remote agents), sees the tools of :mod:`agents.tools`
scoped to one search and one specialist, and takes part in the search like
arl's own specialists: each ``submit`` becomes one trial attributed to that
specialist (backend ``mcp``), with the caller's identity, the client's name,
version and session in the proposal's recorded call blob, and workers run it
like any other.

Over HTTP nobody gets in without a bearer token (:mod:`runners.tokens`): a
request without a valid one gets 401 and no tool list; a token bound to
another specialist gets 403. The identity recorded with a submission is the
token's name, never what the client says it is (that is kept too, as its
claim). Binding anything but loopback without tokens is refused, and only
Host headers naming this machine are answered.

Under load the server stays responsive: tools run on a bounded pool of threads
that ``wait`` never occupies (a wait is a coroutine that polls the log), the
number of pending waits is bounded per session and overall, ``submit`` is
rate-limited per caller, and ``sql`` runs in a guarded DuckDB
(:mod:`queries.guarded`: statement timeout, memory, threads, temp space,
offset cap).
"""

from __future__ import annotations

import functools
import getpass
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from typing_extensions import NotRequired, TypedDict  # pydantic needs these on Python < 3.12

import anyio
import msgspec
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError as McpToolError

from arl.agents.base import Proposal
from arl.agents.tools import MAX_WAIT_S, SPECS, TEXT_PAGE, EditBlock, LedgerTools
from arl.ledger import events as ev
from arl.ledger.errors import ArlError
from arl.ledger.projections import Projector
from arl.ledger.searches import find_search
from arl.ledger.store import Ledger
from arl.runners.tokens import (
    ENV_TOKEN,
    SCOPE_KEY,
    Credential,
    RequireToken,
    TokenFile,
    TokenGate,
    allowed_hosts,
    default_token_file,
    server_gate,
)
from arl.runners.trials import base_program, record_proposal
from arl.tasks.registry import recorded_task, task_of


class Edit(TypedDict):
    """One search/replace edit (the MCP schema of agents.tools.EditBlock)."""

    file: str
    search: NotRequired[str]
    replace: str


class McpCall(msgspec.Struct, kw_only=True):
    """A submission through MCP as recorded in the blob store (the proposal's agent-call blob)."""

    backend: str = "mcp"
    tool: str
    arguments: dict[str, Any]
    #: Who submitted, as the server established it: the bearer token's name (HTTP), or
    #: ``local:<user>`` for the operating-system user that started ``arl mcp`` (stdio).
    credential: str | None = None
    #: The MCP client as it introduced itself (clientInfo name and version): its claim, unchecked.
    client: str | None = None
    client_version: str | None = None
    #: The MCP session: the transport's session id (HTTP), else one per `arl mcp` process (stdio).
    session: str
    transport: str
    at: float


class McpLimits(msgspec.Struct, frozen=True, kw_only=True):
    """What one ``arl mcp`` server lets its clients use at once."""

    #: Submissions per minute per caller (a token over HTTP; the process on stdio), in bursts up to that many.
    submits_per_minute: float = 12.0
    #: ``wait`` calls pending at once in one MCP session, and in the whole server.
    waits_per_session: int = 4
    waits_total: int = 64
    #: Threads the other tools run on (waits take none): how many sql, read or submit calls run at once.
    tool_threads: int = 8
    #: How often a pending ``wait`` looks at the log.
    wait_poll_s: float = 0.5


class McpSpecialist:
    """The tools of one MCP specialist, recording what it submits."""

    def __init__(self, ledger: Ledger, search_ref: str | None, specialist: str, *, transport: str = "stdio") -> None:
        self.ledger = ledger
        search_id = find_search(ledger, search_ref)
        started = ledger.stream(search_id)[0]
        assert isinstance(started, ev.SearchStarted)
        projector = Projector(ledger, name=f"tools/{search_id}/{specialist}", checkpoint_s=60.0)
        self.imported = started.kind == "import"
        if self.imported:  # no task folder: the record's own specialists, read-only (submit is refused)
            trials = projector.catch_up().trials_of(search_id)
            self.task = recorded_task(started, (n for r in trials for n in (r.agent, r.surface)))
        else:
            self.task = task_of(started)
            self.base = base_program(ledger, started, self.task)
        names = [s.name for s in self.task.surfaces]
        if specialist not in names:
            raise ArlError(f"task {self.task.name} has no specialist {specialist!r}; "
                              f"choose one of: {', '.join(names)}")
        self.transport = transport
        self.session = f"{transport}-{uuid.uuid4()}"  # stdio: one client per process
        self.tools = LedgerTools(ledger, self.task, search_id, specialist=specialist, surface=specialist,
                                 lineage=bool(started.config.get("lineage", True)), backend="mcp",
                                 projector=projector, sink=None if self.imported else self._record)

    def _record(self, proposal: Proposal, call: Mapping[str, Any]) -> dict[str, Any]:
        blob = McpCall(tool=str(call.get("tool", "submit")), arguments=dict(call.get("arguments") or {}),
                       credential=call.get("credential"),
                       client=call.get("client"), client_version=call.get("client_version"),
                       session=str(call.get("session") or self.session), transport=self.transport,
                       at=time.time())
        proposal.agent_call_digest = self.ledger.put_blob(msgspec.json.encode(blob))
        trial, seq = record_proposal(self.ledger, self.task, self.tools.search_id, proposal,
                                     state=self.tools.state, program_of=self.tools.program_of, base=self.base)
        row = self.tools.state().trials[trial]
        if row.label is not None:  # rejected at once: the edit never became a program
            return {"trial_id": trial, "seq": seq, "status": "rejected", "label": row.label.value,
                    "reason": row.reason}
        return {"trial_id": trial, "seq": seq, "status": "submitted",
                "note": "a worker runs it; call wait with this trial_id for its label"}


class SubmitRate:
    """A token bucket per caller: ``per_minute`` submissions a minute, in bursts up to that many."""

    def __init__(self, per_minute: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # caller → (tokens, at)
        self._lock = threading.Lock()

    def take(self, caller: str) -> None:
        """Spend one submission of ``caller``'s allowance, or refuse with when to retry."""
        if self.per_minute <= 0:
            return
        with self._lock:
            now = self.clock()
            tokens, at = self._buckets.get(caller, (self.per_minute, now))
            tokens = min(self.per_minute, tokens + (now - at) * self.per_minute / 60.0)
            if tokens < 1.0:
                retry = (1.0 - tokens) * 60.0 / self.per_minute
                self._buckets[caller] = (tokens, now)
                raise McpToolError(f"submit rate limit: at most {self.per_minute:g} submissions a minute for "
                                   f"{caller}; retry in {retry:.0f} s (meanwhile, wait for your trials' labels)")
            self._buckets[caller] = (tokens - 1.0, now)


class WaitSlots:
    """Bounds on pending ``wait`` calls, per MCP session and overall; over either, a call is refused."""

    def __init__(self, per_session: int, total: int) -> None:
        self.per_session = per_session
        self.total = total
        self._pending: dict[str, int] = {}
        self._lock = threading.Lock()

    def pending(self) -> int:
        with self._lock:
            return sum(self._pending.values())

    def enter(self, session: str) -> None:
        with self._lock:
            if self._pending.get(session, 0) >= self.per_session:
                raise McpToolError(f"this session already has {self.per_session} wait calls pending (the most "
                                   "per session); let one return before starting another")
            if sum(self._pending.values()) >= self.total:
                raise McpToolError(f"the server has {self.total} wait calls pending (its most); "
                                   "retry in a while")
            self._pending[session] = self._pending.get(session, 0) + 1

    def leave(self, session: str) -> None:
        with self._lock:
            left = self._pending.get(session, 1) - 1
            if left > 0:
                self._pending[session] = left
            else:
                self._pending.pop(session, None)


def build_server(specialist: McpSpecialist, limits: McpLimits | None = None) -> Any:
    """The MCP server (mcp's MCPServer) with one tool per ledger tool."""
    limits = limits or McpLimits()
    tools = specialist.tools
    search = tools.search_id
    server = MCPServer(
        "arl",
        instructions=(
            f"You are the {tools.specialist} specialist of arl search {search[:8]} on task {tools.task.name}. "
            "Read the lineage, inspect trials (read_program, diff, sql), preflight edits with check, "
            "submit one trial at a time and wait for its label before the next."),
        log_level="WARNING",
    )
    pool = anyio.CapacityLimiter(limits.tool_threads)
    # Pending waits look at the log on threads of their own, so however many there are,
    # the other tools' threads stay free.
    wait_pool = anyio.CapacityLimiter(2)
    rate = SubmitRate(limits.submits_per_minute)
    waits = WaitSlots(limits.waits_per_session, limits.waits_total)
    local = f"local:{_os_user()}"

    def who(ctx: Context | None) -> dict[str, Any]:
        """The caller: its credential (from the server's own check), session and client claim."""
        out: dict[str, Any] = {"credential": local, "session": specialist.session}
        if ctx is None:
            return out
        request = getattr(ctx.request_context, "request", None)
        credential = getattr(request, "scope", {}).get(SCOPE_KEY) if request is not None else None
        if isinstance(credential, Credential):
            out["credential"] = credential.name
        elif request is not None:  # HTTP without tokens (loopback, --no-auth): nobody vouched
            out["credential"] = None
        try:
            params = ctx.session.client_params
        except (AttributeError, LookupError, ValueError):
            params = None
        if params is not None and params.client_info is not None:
            out["client"], out["client_version"] = params.client_info.name, params.client_info.version
        headers = ctx.headers or {}
        session = headers.get("mcp-session-id") or headers.get("Mcp-Session-Id")
        if session:
            out["session"] = session
        return out

    # The furthest log position each session has been shown (its submissions, the labels it
    # waited for): its sql answers hold at least that much of the log.
    shown: dict[str, int] = {}

    def call(name: str, session: str, caller: Mapping[str, Any] | None, arguments: dict[str, Any]) -> dict[str, Any]:
        try:
            reply = tools.call(name, {k: v for k, v in arguments.items() if v is not None}, caller=caller,
                               fresh_as_of=shown.get(session, 0))
        except ArlError as e:  # ToolError included: the message goes back to the client as the error
            raise McpToolError(str(e)) from None
        if name == "submit":
            shown[session] = max(shown.get(session, 0), tools.ledger.head())
        return reply

    async def run(name: str, ctx: Context | None = None, **arguments: Any) -> dict[str, Any]:
        caller = who(ctx)
        if name == "submit":
            rate.take(caller["credential"] or f"session {caller['session']}")
        return await anyio.to_thread.run_sync(
            functools.partial(call, name, caller["session"], caller if name == "submit" else None, arguments),
            limiter=pool)

    async def lineage(ctx: Context, offset: int = 0, limit: int = TEXT_PAGE) -> dict[str, Any]:
        return await run("lineage", ctx, offset=offset, limit=limit)

    async def sql(query: str, ctx: Context, offset: int = 0, limit: int = 50) -> dict[str, Any]:
        return await run("sql", ctx, query=query, offset=offset, limit=limit)

    async def read_program(ctx: Context, trial: str = "best", path: str | None = None, offset: int = 0,
                           limit: int = TEXT_PAGE) -> dict[str, Any]:
        return await run("read_program", ctx, trial=trial, path=path, offset=offset, limit=limit)

    async def diff(ctx: Context, trial: str = "best", against: str | None = None, offset: int = 0,
                   limit: int = TEXT_PAGE) -> dict[str, Any]:
        return await run("diff", ctx, trial=trial, against=against, offset=offset, limit=limit)

    async def check(ctx: Context, edits: list[Edit] | None = None, diff: str | None = None,
                    parents: list[str] | None = None) -> dict[str, Any]:
        return await run("check", ctx, edits=edits, diff=diff, parents=parents)

    async def submit(hypothesis: str, ctx: Context, edits: list[Edit] | None = None,
                     diff: str | None = None, parents: list[str] | None = None,
                     expected_delta: float | None = None) -> dict[str, Any]:
        return await run("submit", ctx, hypothesis=hypothesis, edits=edits, diff=diff, parents=parents,
                         expected_delta=expected_delta)

    head_seen = [0, float("-inf")]  # the log head and when it was read: one read serves every waiter

    async def log_head() -> int:
        if time.monotonic() - head_seen[1] >= limits.wait_poll_s / 2:
            head_seen[:] = [await anyio.to_thread.run_sync(tools.ledger.head, limiter=wait_pool), time.monotonic()]
        return int(head_seen[0])

    async def wait(trial: str, ctx: Context, timeout_s: float = 300.0) -> dict[str, Any]:
        if not 0 < timeout_s <= MAX_WAIT_S:
            raise McpToolError(f"bad arguments for wait: timeout_s must be in (0, {MAX_WAIT_S:g}] seconds")
        session = who(ctx)["session"]
        waits.enter(session)
        try:
            deadline = time.monotonic() + timeout_s
            seen = -1
            while True:
                head = await log_head()
                if head != seen:  # only a moved log can have labelled the trial
                    reply, seen = await anyio.to_thread.run_sync(
                        functools.partial(_poll, tools, trial), limiter=wait_pool)
                    if not reply["timed_out"]:
                        shown[session] = max(shown.get(session, 0), seen)
                        return reply
                left = deadline - time.monotonic()
                if left <= 0:
                    return reply
                await anyio.sleep(min(limits.wait_poll_s, left))
        finally:
            waits.leave(session)

    for fn in (lineage, sql, read_program, diff, check, submit, wait):
        spec = SPECS[fn.__name__]
        server.add_tool(fn, name=spec.name, description=_describe(spec.description, spec.args))
    return server


def _poll(tools: LedgerTools, trial: str) -> tuple[dict[str, Any], int]:
    try:
        return tools.poll(trial)
    except ArlError as e:
        raise McpToolError(str(e)) from None


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _describe(description: str, args: type) -> str:
    """The tool's description plus what each argument means (MCP clients show both to the model)."""
    schema = msgspec.json.schema(args)
    props = next(iter(schema.get("$defs", {}).values()), {}).get("properties", {})
    edit = msgspec.json.schema(EditBlock)["$defs"]["EditBlock"]["properties"]
    lines = [description]
    for name, prop in props.items():
        if "description" in prop:
            lines.append(f"- {name}: {prop['description']}")
        if name == "edits":
            lines.append("  each edit: " + "; ".join(f"{k}: {v.get('description', '')}" for k, v in edit.items()))
    return "\n".join(lines)


# --- streamable HTTP ---------------------------------------------------------------------------


class HttpAccess(msgspec.Struct, frozen=True, kw_only=True):
    """Who may reach the HTTP server: where it listens, its tokens, the Host headers it answers."""

    host: str = "127.0.0.1"
    port: int = 8000
    #: The token file (None: ``runners.tokens.default_token_file()``).
    token_file: str | None = None
    #: Serve without tokens: only on a loopback address.
    no_auth: bool = False
    #: More Host header values to answer (a name or address clients use for this machine).
    allow_hosts: tuple[str, ...] = ()


def http_app(server: Any, specialist: str, access: HttpAccess, gate: TokenGate | None) -> Any:
    """The ASGI app: mcp's streamable-HTTP app, behind the token check (unless ``gate`` is None)."""
    from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
    from mcp.server.auth.provider import AccessToken
    from mcp.server.transport_security import TransportSecuritySettings

    hosts = allowed_hosts(access.host, access.allow_hosts)
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=[h for name in hosts for h in (name, f"{name}:*")],
        allowed_origins=[f"{scheme}://{name}:*" for name in hosts for scheme in ("http", "https")],
    )
    inner = server.streamable_http_app(host=access.host, transport_security=security)
    if gate is None:
        return inner

    async def as_mcp_user(scope: dict[str, Any], receive: Any, send: Any) -> None:
        # mcp binds each session to the principal that opened it (scope["user"]): a session id
        # seen with another token is answered as unknown.
        credential = scope.get(SCOPE_KEY)
        if isinstance(credential, Credential):
            scope["user"] = AuthenticatedUser(AccessToken(token="", client_id=credential.name, scopes=[]))
        await inner(scope, receive, send)

    def admit(credential: Credential) -> str | None:
        if credential.specialist and credential.specialist != specialist:
            return (f"token {credential.name!r} is bound to specialist {credential.specialist!r}; this server "
                    f"serves {specialist!r}")
        return None

    return RequireToken(as_mcp_user, gate, admit=admit, realm="arl mcp")


def http_gate(access: HttpAccess, specialist: str, *, announce: Callable[[str], None]) -> TokenGate | None:
    """The tokens the server accepts; on first start (none anywhere) one is made and announced once."""
    def first_start(token: str, path: Path) -> None:
        url = f"http://{_reachable(access.host)}:{access.port}/mcp"
        announce(
            f"arl mcp: no token yet; made token {specialist!r} for specialist {specialist} (shown once; "
            f"{path} keeps only its hash):\n  {token}\n"
            f"  connect: claude mcp add --transport http arl-{specialist} {url} "
            f"--header \"Authorization: Bearer {token}\"\n"
            "  more: arl token add NAME [--specialist S]; list: arl token list; revoke: arl token revoke NAME")

    return server_gate(access.host, token_file=access.token_file, no_auth=access.no_auth,
                       first_token=specialist, specialist=specialist, announce=first_start)


def _reachable(host: str) -> str:
    import socket

    return socket.gethostname() if host in ("0.0.0.0", "::", "") else host


def serve(ledger: Ledger, search_ref: str | None, specialist: str, *, transport: str = "stdio",
          access: HttpAccess | None = None, limits: McpLimits | None = None) -> None:
    """Serve until the client disconnects (stdio) or the process is stopped (http)."""
    if transport not in ("stdio", "http"):
        raise ArlError(f"--transport {transport!r}: use stdio or http")
    access = access or HttpAccess()
    gate = None
    if transport == "http":
        gate = http_gate(access, specialist, announce=lambda text: print(text, file=sys.stderr, flush=True))
    seat = McpSpecialist(ledger, search_ref, specialist, transport=transport)
    server = build_server(seat, limits)
    if transport == "stdio":
        server.run("stdio")
        return
    import uvicorn

    app = http_app(server, specialist, access, gate)
    auth = (f"bearer token required ({len(gate)} accepted: {TokenFile(access.token_file or default_token_file()).path}"
            f"{', ARL_TOKEN' if os.environ.get(ENV_TOKEN) else ''})" if gate is not None
            else "NO authentication (--no-auth, loopback only)")
    print(f"arl mcp: search {seat.tools.search_id[:8]} as specialist {specialist} on "
          f"http://{access.host}:{access.port}/mcp; {auth}; Host headers answered: "
          f"{', '.join(allowed_hosts(access.host, access.allow_hosts))} (more with --allow-host)",
          file=sys.stderr, flush=True)
    uvicorn.Server(uvicorn.Config(app, host=access.host, port=access.port, log_level="warning",
                                  timeout_graceful_shutdown=5)).run()

