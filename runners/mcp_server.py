"""``arl mcp``: the ledger tools as an MCP server, so any MCP client can be a specialist.

Claude Code, Codex or any other MCP-capable agent connects (stdio, or
streamable HTTP for remote agents), sees the tools of :mod:`agents.tools`
scoped to one search and one specialist, and takes part in the search like
arl's own specialists: each ``submit`` becomes one trial attributed to that
specialist (backend ``mcp``), with the client's name, version and session in
the proposal's recorded call blob, and workers run it like any other.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

from typing_extensions import NotRequired, TypedDict  # pydantic needs these on Python < 3.12

import msgspec
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError as McpToolError

from arl.agents.base import Proposal
from arl.agents.tools import SPECS, TEXT_PAGE, EditBlock, LedgerTools
from arl.ledger import events as ev
from arl.ledger.errors import ArlError
from arl.ledger.projections import Projector
from arl.ledger.searches import find_search
from arl.ledger.store import Ledger
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
    #: The MCP client as it introduced itself (clientInfo name and version).
    client: str | None = None
    client_version: str | None = None
    #: The MCP session: the transport's session id (HTTP), else one per `arl mcp` process (stdio).
    session: str
    transport: str
    at: float


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


def build_server(specialist: McpSpecialist) -> Any:
    """The MCP server (mcp's MCPServer) with one tool per ledger tool."""
    tools = specialist.tools
    search = tools.search_id
    server = MCPServer(
        "arl",
        instructions=(
            f"You are the {tools.specialist} specialist of arl search {search[:8]} on task {tools.task.name}. "
            "Read the lineage, inspect trials (read_program, diff, sql), preflight edits with check, "
            "submit one trial at a time and wait for its label before the next."),
    )

    def caller(ctx: Context | None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if ctx is None:
            return out
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

    def run(name: str, ctx: Context | None = None, **arguments: Any) -> dict[str, Any]:
        try:
            return tools.call(name, {k: v for k, v in arguments.items() if v is not None},
                              caller=caller(ctx) if name == "submit" else None)
        except ArlError as e:  # ToolError included: the message goes back to the client as the error
            raise McpToolError(str(e)) from None

    def lineage(offset: int = 0, limit: int = TEXT_PAGE) -> dict[str, Any]:
        return run("lineage", offset=offset, limit=limit)

    def sql(query: str, offset: int = 0, limit: int = 50) -> dict[str, Any]:
        return run("sql", query=query, offset=offset, limit=limit)

    def read_program(trial: str = "best", path: str | None = None, offset: int = 0,
                     limit: int = TEXT_PAGE) -> dict[str, Any]:
        return run("read_program", trial=trial, path=path, offset=offset, limit=limit)

    def diff(trial: str = "best", against: str | None = None, offset: int = 0,
             limit: int = TEXT_PAGE) -> dict[str, Any]:
        return run("diff", trial=trial, against=against, offset=offset, limit=limit)

    def check(edits: list[Edit] | None = None, diff: str | None = None,
              parents: list[str] | None = None) -> dict[str, Any]:
        return run("check", edits=edits, diff=diff, parents=parents)

    def submit(hypothesis: str, ctx: Context, edits: list[Edit] | None = None,
               diff: str | None = None, parents: list[str] | None = None,
               expected_delta: float | None = None) -> dict[str, Any]:
        return run("submit", ctx, hypothesis=hypothesis, edits=edits, diff=diff, parents=parents,
                   expected_delta=expected_delta)

    def wait(trial: str, timeout_s: float = 300.0) -> dict[str, Any]:
        return run("wait", trial=trial, timeout_s=timeout_s)

    for fn in (lineage, sql, read_program, diff, check, submit, wait):
        spec = SPECS[fn.__name__]
        server.add_tool(fn, name=spec.name, description=_describe(spec.description, spec.args))
    return server


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


def serve(ledger: Ledger, search_ref: str | None, specialist: str, *, transport: str = "stdio",
          host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve until the client disconnects (stdio) or the process is stopped (http)."""
    if transport not in ("stdio", "http"):
        raise ArlError(f"--transport {transport!r}: use stdio or http")
    server = build_server(McpSpecialist(ledger, search_ref, specialist, transport=transport))
    if transport == "stdio":
        server.run("stdio")
    else:
        server.run("streamable-http", host=host, port=port)
