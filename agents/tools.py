"""Ledger tools: what a specialist may look at and do during a multi-turn session.

One tool set, two ways in: arl's own agent loop (:mod:`agents.agentic`) runs
these for a model's tool calls, and ``arl mcp`` serves them to any MCP client
(Claude Code, Codex, …). Each tool is a thin function over the projections,
the programs in the blob store or the DuckDB views, scoped to one search and
one specialist, and returns a JSON-able dict of bounded size that the caller
can page through (``offset`` → ``next_offset``).

    lineage       the specialist's lineage view (what the driver would show it)
    sql           read-only SQL over this search's rows of the forensics views
    read_program  a file (or the file list) of any trial's program
    diff          two trials, or a trial against its parent
    check         preflight a candidate edit: applies? in surface? syntax? size? duplicate?
    submit        hypothesis + edit against parent(s) → a proposal (one trial)
    wait          block until a trial is labelled

With lineage off (the control arm) lineage, sql, read_program and diff refuse
every trial but the current best. A call that cannot be read (bad arguments,
an unknown trial) is answered with a :class:`ToolError`; a proposal that can be
read is recorded, whatever becomes of its edit.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Mapping
from datetime import date, datetime
from typing import Annotated, Any

import duckdb
import msgspec

from arl.agents.base import Proposal
from arl.agents.edits import EditError, apply_search_replace, apply_unified_diff
from arl.agents.lineage import LineageView, build_view
from arl.ledger import events as ev
from arl.ledger.errors import ArlError
from arl.ledger.events import Label
from arl.ledger.programs import Program, ProgramCache, program_digest, read_folder, touched, unified_diff
from arl.ledger.projections import Projector, State, TrialRow
from arl.ledger.searches import search_config
from arl.ledger.store import Ledger
from arl.queries.errors import QueryError
from arl.queries.guarded import GuardedDuckDB, SqlLimits, one_select, rows_of
from arl.queries.load import connect, refresh
from arl.tasks import legality
from arl.tasks.manifest import Surface, Task

#: Default and largest page of text a tool returns (characters).
TEXT_PAGE = 6_000
MAX_TEXT = 16_000
#: Default and largest page of SQL rows; longer cells are cut.
SQL_ROWS = 50
MAX_SQL_ROWS = 200
CELL_CHARS = 400
#: Longest a single ``wait`` call blocks.
MAX_WAIT_S = 600.0
HYPOTHESIS_CHARS = 500
REASON_CHARS = 300


class ToolError(ArlError):
    """A tool call cannot be served; the message says why and what to call instead."""


# --- arguments: one struct per tool, the single source of its JSON schema ---------------------

_Offset = Annotated[int, msgspec.Meta(ge=0, description="where the page starts (the previous reply's next_offset)")]
_Chars = Annotated[int, msgspec.Meta(ge=1, le=MAX_TEXT, description="page size in characters")]
_Trial = Annotated[str, msgspec.Meta(description='a trial of this search: "best", "baseline", "#SEQ", or its id (or id prefix)')]


class _Args(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pass


class LineageArgs(_Args):
    offset: _Offset = 0
    limit: _Chars = TEXT_PAGE


class SqlArgs(_Args):
    query: Annotated[str, msgspec.Meta(description=(
        "one SELECT (or WITH … SELECT) over the views trials, lineage, checks, events, agent_calls, "
        "searches — holding this search's rows only"))]
    offset: Annotated[int, msgspec.Meta(ge=0, description="rows to skip (the previous reply's next_offset)")] = 0
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_SQL_ROWS, description="rows per page")] = SQL_ROWS


class ReadProgramArgs(_Args):
    trial: _Trial = "best"
    path: Annotated[str | None, msgspec.Meta(description="file to read; omit to list the files")] = None
    offset: _Offset = 0
    limit: _Chars = TEXT_PAGE


class DiffArgs(_Args):
    trial: _Trial = "best"
    against: Annotated[str | None, msgspec.Meta(description="the other trial; omit for the trial's own edit against its parent")] = None
    offset: _Offset = 0
    limit: _Chars = TEXT_PAGE


class EditBlock(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    file: Annotated[str, msgspec.Meta(description="path of a file of your surface")]
    search: Annotated[str, msgspec.Meta(description="exact text of the file to replace, occurring once (empty: create the file)")] = ""
    replace: Annotated[str, msgspec.Meta(description="the new text")]


_Edits = Annotated[list[EditBlock] | None, msgspec.Meta(description="search/replace edits, applied in order")]
_Diff = Annotated[str | None, msgspec.Meta(description="a unified diff (--- a/FILE, +++ b/FILE, @@ hunks), instead of edits")]
_Parents = Annotated[list[str] | None, msgspec.Meta(description='trials to start from (default ["best"]); a second one merges its surface in')]


class CheckArgs(_Args):
    edits: _Edits = None
    diff: _Diff = None
    parents: _Parents = None


class SubmitArgs(_Args):
    hypothesis: Annotated[str, msgspec.Meta(description="why this change should help, one sentence")]
    edits: _Edits = None
    diff: _Diff = None
    parents: _Parents = None
    expected_delta: Annotated[float | None, msgspec.Meta(description="expected signed change of the objective")] = None


class WaitArgs(_Args):
    trial: _Trial
    timeout_s: Annotated[float, msgspec.Meta(gt=0, le=MAX_WAIT_S, description="longest to block, seconds")] = 300.0


class ToolSpec(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    description: str
    args: type[_Args]

    def parameters(self) -> dict[str, Any]:
        """The arguments' JSON schema, inlined (no $ref: tool-calling grammars want it flat)."""
        return _inline(msgspec.json.schema(self.args))

    def openai(self) -> dict[str, Any]:
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters()}}


SPECS: dict[str, ToolSpec] = {s.name: s for s in (
    ToolSpec(name="lineage", args=LineageArgs, description=(
        "The search so far as your specialist sees it: the current best and how it was reached, "
        "what was tried on top of it with labels and reasons, your own recent trials, others' failures.")),
    ToolSpec(name="sql", args=SqlArgs, description=(
        "Read-only SQL (DuckDB) over this search: views trials, lineage, checks, events, agent_calls, "
        "searches. Rows are paged.")),
    ToolSpec(name="read_program", args=ReadProgramArgs, description=(
        "A file of a trial's program (paged), or without path the list of its files.")),
    ToolSpec(name="diff", args=DiffArgs, description=(
        "Unified diff of a trial against its parent (its edit), or against another trial.")),
    ToolSpec(name="check", args=CheckArgs, description=(
        "Preflight a candidate edit without running anything: does it apply, stay in your surface, "
        "compile, fit the size cap, differ from every program already run?")),
    ToolSpec(name="submit", args=SubmitArgs, description=(
        "Propose one trial: a hypothesis and an edit (edits or diff) against the parent(s), default the best. "
        "It is recorded and run; its label comes later.")),
    ToolSpec(name="wait", args=WaitArgs, description=(
        "Block until a trial is labelled (or timeout_s passes); returns its label, score and reason.")),
)}


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    defs = schema.get("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return walk(defs[node["$ref"].rsplit("/", 1)[-1]])
            out = {k: walk(v) for k, v in node.items() if k not in ("$defs", "title")}
            # Optional fields are "X or null": say X (absent means null); grammars handle it better.
            variants = out.get("anyOf")
            if isinstance(variants, list) and len(variants) == 2 and {"type": "null"} in variants:
                rest = dict(next(v for v in variants if v != {"type": "null"}))
                del out["anyOf"]
                out = {**rest, **out}
            if "default" in out and out["default"] is None:
                del out["default"]
            return out
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)


#: Records (``arl mcp``) or keeps (an agentic session) a submitted proposal:
#: ``sink(proposal, call)`` → the reply to the caller. ``call`` holds the tool's
#: arguments and who called (client name, session), for the proposal's call blob.
Sink = Callable[[Proposal, Mapping[str, Any]], dict[str, Any]]


class _Candidate(msgspec.Struct, kw_only=True):
    parents: list[TrialRow]
    parent_program: dict[str, bytes]
    program: dict[str, bytes] | None = None
    error: str | None = None


class LedgerTools:
    """The tools of one specialist in one search. Thread-safe (an MCP server calls from threads).

    ``backend`` is what proposals are attributed to ("mcp", "agentic");
    ``sink`` receives submissions (None: ``submit`` is refused).
    """

    def __init__(
        self,
        ledger: Ledger,
        task: Task,
        search_id: str,
        *,
        specialist: str,
        surface: Surface | str,
        lineage: bool = True,
        backend: str = "mcp",
        projector: Projector | None = None,
        sink: Sink | None = None,
        sql_limits: SqlLimits | None = None,
    ) -> None:
        self.ledger = ledger
        self.task = task
        self.search_id = search_id
        self.specialist = specialist
        self.surface = task.surface(surface) if isinstance(surface, str) else surface
        self.lineage_on = lineage
        self.backend = backend
        self.sink = sink
        self.projector = projector or Projector(ledger, name=f"tools/{search_id}/{specialist}", checkpoint_s=60.0)
        #: What one ``sql`` call may use (statement timeout, memory, threads, temp space, paging).
        self.sql_limits = sql_limits or SqlLimits(max_rows=MAX_SQL_ROWS)
        self._lock = threading.RLock()
        self.programs = ProgramCache(ledger)
        self._duck: duckdb.DuckDBPyConnection | None = None
        self._guarded: GuardedDuckDB | None = None
        self._guarded_at: tuple[int, str] | None = None  # (log head, best trial) of its rows
        self._sql_lock = threading.Lock()  # guards the two above
        self._copy_lock = threading.Lock()  # one copy of the rows at a time
        #: The furthest log position a submission or a returned label has shown: sql shows it too.
        self._shown_at = 0
        self._pinned: State | None = None
        started = ledger.stream(search_id)
        if not started or not isinstance(started[0], ev.SearchStarted):
            raise ToolError(f"{search_id} is not a search in {ledger.url.display()}; "
                            "`arl status` names the latest")
        self.config = started[0].config
        #: Set for an imported search: a record of trials run elsewhere, which nothing can be added to.
        self.imported_from = str(self.config.get("format", "another tool")) if started[0].kind == "import" else None

    # -- dispatch (the agent loop's way in) ------------------------------------------------------

    def call(self, name: str, arguments: Mapping[str, Any], *, caller: Mapping[str, Any] | None = None,
             fresh_as_of: int | None = None) -> dict[str, Any]:
        """Run the tool ``name`` with JSON arguments; bad names or arguments are a :class:`ToolError`.

        ``caller``: who submits (recorded with a submission); ``fresh_as_of``: for sql, the log
        position the caller has been shown (a server with many sessions passes each one's own)."""
        spec = SPECS.get(name)
        if spec is None:
            raise ToolError(f"unknown tool {name!r}; the tools are: {', '.join(SPECS)}")
        if not isinstance(arguments, Mapping):
            raise ToolError(f"the arguments of {name} must be a JSON object, not {type(arguments).__name__}")
        try:
            args = msgspec.convert(dict(arguments), spec.args, strict=False)
        except msgspec.ValidationError as e:
            raise ToolError(f"bad arguments for {name}: {e}") from None
        kwargs = {f: getattr(args, f) for f in args.__struct_fields__}
        if name == "submit":
            kwargs["caller"] = caller
        if name == "sql":
            kwargs["fresh_as_of"] = fresh_as_of
        return getattr(self, name)(**kwargs)

    # -- reading -----------------------------------------------------------------------------------

    def state(self) -> State:
        with self._lock:
            return self._current()

    def pin(self, state: State | None) -> None:
        """Read ``state`` instead of following the log (a replay re-drives a session as it was); None: follow."""
        with self._lock:
            self._pinned = state

    def _current(self) -> State:
        return self._pinned if self._pinned is not None else self.projector.catch_up()

    def lineage(self, offset: int = 0, limit: int = TEXT_PAGE) -> dict[str, Any]:
        with self._lock:
            state = self._current()
            view = build_view(state, self.search_id, specialist=self.specialist, surface=self.surface.name,
                              metric=self.task.objective.metric, program_of=self.program_of,
                              lineage=self.lineage_on)
            search = state.searches[self.search_id]
            best = state.trials.get(search.best_trial) if search.best_trial else None
            return {
                "search": self.search_id, "specialist": self.specialist, "surface": self.surface.name,
                "files": list(self.surface.files), "lineage": "on" if self.lineage_on else "off",
                "best": _trial_json(best) if best else None,
                "budget": self._budget(state),
                **_page(view.render(), offset, limit),
            }

    def sql(self, query: str, offset: int = 0, limit: int = SQL_ROWS, *,
            fresh_as_of: int | None = None) -> dict[str, Any]:
        """``fresh_as_of``: the rows include the log up to this position (default: everything these
        tools have shown — submissions and labels returned); beyond it they may lag a moving log
        by the time one copy takes."""
        try:
            one_select(query)  # refused before any copying
            needed = self._shown_at if fresh_as_of is None else fresh_as_of
            page = self._scoped_duckdb(needed).page(query, offset, min(limit, MAX_SQL_ROWS))
        except QueryError as e:
            raise ToolError(str(e)) from None
        return {"columns": page.columns, "rows": [[_cell(v) for v in row] for row in page.rows],
                "offset": page.offset, "next_offset": page.next_offset}

    def read_program(self, trial: str = "best", path: str | None = None, offset: int = 0,
                     limit: int = TEXT_PAGE) -> dict[str, Any]:
        with self._lock:
            row = self._trial(trial)
            program = self._program(row)
        if path is None:
            return {"trial": _trial_json(row), "files": [
                {"path": p, "bytes": len(d), "yours": p in self.surface.files,
                 "protected": self.task.is_protected(p)} for p, d in sorted(program.items())]}
        data = program.get(path.strip().removeprefix("./"))
        if data is None:
            raise ToolError(f"{path} is not a file of trial #{row.seq}; its files: {', '.join(sorted(program))}")
        try:
            text = data.decode()
        except UnicodeDecodeError:
            raise ToolError(f"{path} is binary ({len(data)} bytes); only text files can be read") from None
        return {"trial": _trial_json(row), "path": path, **_page(text, offset, limit)}

    def diff(self, trial: str = "best", against: str | None = None, offset: int = 0,
             limit: int = TEXT_PAGE) -> dict[str, Any]:
        with self._lock:
            row = self._trial(trial)
            if against is None:
                if not row.parents:
                    raise ToolError(f"trial #{row.seq} has no parent (it is the baseline); give against=…")
                base = self._trial(row.parents[0])
                if row.program_digest is None:  # rejected: what it proposed is its recorded edit, if any
                    text = self._recorded_edit(row)
                    return {"trial": _trial_json(row), "against": _trial_json(base), **_page(text, offset, limit)}
            else:
                base = self._trial(against)
            text = unified_diff(self._program(base), self._program(row))
        return {"trial": _trial_json(row), "against": _trial_json(base),
                **_page(text or "(the programs are identical)", offset, limit)}

    # -- proposing ---------------------------------------------------------------------------------

    def check(self, edits: list[EditBlock] | None = None, diff: str | None = None,
              parents: list[str] | None = None) -> dict[str, Any]:
        with self._lock:
            candidate = self._candidate(edits, diff, parents)
            state = self._current()
        out: dict[str, Any] = {"parents": [_trial_json(r) for r in candidate.parents]}
        if candidate.program is None:
            return {**out, "applies": False, "would_be": Label.INVALID_EDIT.value, "reason": candidate.error}
        findings = legality.findings(self.task, self.surface.name, candidate.parent_program, candidate.program,
                                     self._reference(state), also=self._also(candidate.parents))
        digest = program_digest(candidate.program)
        same = next((r for r in state.trials_of(self.search_id) if r.program_digest == digest), None)
        if same is not None:
            findings.append(legality.Finding("duplicate", Label.DUPLICATE,
                                             f"same program as trial #{same.seq} ({same.trial_id[:8]})"))
        failed = legality.first_failure(findings)
        cap = self.task.gates.artifact_bytes
        return {
            **out, "applies": True, "touched": touched(candidate.parent_program, candidate.program),
            "checks": [{"name": f.check, "passed": f.passed, "detail": f.detail} for f in findings],
            "code_bytes": sum(len(b) for b in candidate.program.values()), "size_cap": cap,
            "would_be": failed.label.value if failed else "submitted (a worker runs it)",
            "reason": failed.detail if failed else "",
        }

    def submit(self, hypothesis: str, edits: list[EditBlock] | None = None, diff: str | None = None,
               parents: list[str] | None = None, expected_delta: float | None = None, *,
               caller: Mapping[str, Any] | None = None) -> dict[str, Any]:
        if self.imported_from is not None:
            raise ToolError(f"search {self.search_id[:8]} is an import from {self.imported_from}: a record of trials "
                            "run elsewhere, so nothing can be submitted to it; read it with lineage, sql, "
                            "read_program and diff, or start a search of your own with `arl run`")
        if self.sink is None:
            raise ToolError("this session cannot submit")
        if not hypothesis or not hypothesis.strip():
            raise ToolError("give a hypothesis: one sentence saying why the change should help")
        if expected_delta is not None and not math.isfinite(expected_delta):
            raise ToolError("expected_delta must be a finite number (or omitted)")
        # The budget check and the recording hold one lock, in this process and across every
        # process on the ledger (two MCP servers, a driver), so callers cannot together submit
        # past the budget: the state is read under it, after the others' submissions.
        with self._lock, self.ledger.exclusive(f"submit {self.search_id}"):
            state = self._current()
            search = state.searches[self.search_id]
            if search.stop_reason:
                raise ToolError(f"search {self.search_id[:8]} has stopped ({search.stop_reason}); "
                                "nothing more can be submitted to it")
            budget = self._budget(state)
            if budget["trials"] is not None and budget["charged"] + budget["in_flight"] >= budget["trials"]:
                raise ToolError(f"the search's trial budget is spent ({budget['charged']} charged, "
                                f"{budget['in_flight']} running of {budget['trials']}); wait for labels instead")
            candidate = self._candidate(edits, diff, parents)
            proposal = Proposal(
                agent=self.specialist, surface=self.surface.name, hypothesis=_clip(hypothesis, HYPOTHESIS_CHARS),
                expected_delta=expected_delta, parents=tuple(r.trial_id for r in candidate.parents),
                backend=self.backend, program=candidate.program,
                rejected=(Label.INVALID_EDIT, _clip(candidate.error or "", REASON_CHARS)) if candidate.program is None else None,
            )
            arguments = {"hypothesis": hypothesis, "expected_delta": expected_delta, "parents": parents,
                         "edits": msgspec.to_builtins(edits) if edits else None, "diff": diff}
            reply = self.sink(proposal, {"tool": "submit", "arguments": arguments, **(caller or {})})
            self._shown_at = max(self._shown_at, self.ledger.head())
            return reply

    def wait(self, trial: str, timeout_s: float = 300.0) -> dict[str, Any]:
        deadline = time.monotonic() + min(max(timeout_s, 0.0), MAX_WAIT_S)
        while True:
            reply, position = self.poll(trial)
            left = deadline - time.monotonic()
            if not reply["timed_out"] or left <= 0:
                return reply
            self.ledger.wait(position, min(left, 5.0))

    def poll(self, trial: str) -> tuple[dict[str, Any], int]:
        """``wait`` without blocking: the trial's label (``timed_out`` False) or where it stands
        (``timed_out`` True), and the log position that answer was read at."""
        early = str(trial).strip().lower() in ("baseline", "best")  # may not exist yet: wait for it too
        with self._lock:
            state = self._current()
            try:
                row: TrialRow | None = self._trial(trial, waiting=True)
            except ToolError:
                if not early:
                    raise
                row = None
        if row is not None and row.label is not None:
            self._shown_at = max(self._shown_at, state.position)
            return {**_trial_json(row), "timed_out": False}, state.position
        return {**(_trial_json(row) if row else {"trial": trial, "status": "not proposed yet"}),
                "timed_out": True}, state.position

    # -- internals ---------------------------------------------------------------------------------

    def _budget(self, state: State) -> dict[str, Any]:
        search = state.searches[self.search_id]
        rows = state.trials_of(self.search_id)
        trials = search_config(self.ledger, self.search_id).get("trials")  # a resume may change it
        return {"trials": int(trials) if isinstance(trials, int | float) else None, "charged": search.charged,
                "in_flight": sum(1 for r in rows if r.label is None), "stopped": search.stop_reason}

    def _trial(self, ref: str, *, waiting: bool = False) -> TrialRow:
        """A trial of this search by reference; with lineage off only the best (and, to wait, your own)."""
        state = self._current()
        search = state.searches[self.search_id]
        text = str(ref).strip()
        rows = state.trials_of(self.search_id)
        if text.lower() == "best":
            if search.best_trial is None:
                raise ToolError("no legal result yet (the baseline is still running); call wait with trial='baseline'")
            row = state.trials[search.best_trial]
        elif text.lower() == "baseline":
            row = _only([r for r in rows if r.seq == 0], text)
        elif text.lstrip("#").isdigit():
            row = _only([r for r in rows if r.seq == int(text.lstrip("#"))], text)
        elif len(text) >= 4:
            row = _only([r for r in rows if r.trial_id.startswith(text.lower())], text)
        else:
            raise ToolError(f"{ref!r} is not a trial reference; use 'best', 'baseline', '#SEQ' or a trial id")
        if not self.lineage_on and row.trial_id != search.best_trial \
                and not (waiting and row.agent == self.specialist):
            raise ToolError(f"lineage is off in this search (the control arm): only the current best "
                            f"(#{state.trials[search.best_trial].seq if search.best_trial else '—'}) can be read")
        return row

    def _program(self, row: TrialRow) -> dict[str, bytes]:
        if row.program_digest is None:
            why = f" ({row.label.value if row.label else row.status}: {_clip(row.reason, 120)})" if row.reason else ""
            raise ToolError(f"trial #{row.seq} has no program: its edit never became one{why}")
        return self.program_of(row.trial_id)

    def program_of(self, trial_id: str) -> dict[str, bytes]:
        row = self._current().trials[trial_id]
        if row.program_digest is None:
            raise ToolError(f"trial {trial_id[:8]} has no program")
        return self.programs.get(row.program_digest)

    def _reference(self, state: State) -> Program:
        """What legality compares protected files with: the search's baseline program,
        as the worker does (the task's recipe until the baseline is recorded)."""
        base = state.trials.get(ev.trial_id(self.search_id, 0))
        if base is not None and base.program_digest:
            return self.programs.get(base.program_digest)
        return read_folder(self.task.recipe_dir) if self.task.root and self.task.recipe_dir.is_dir() else {}

    def _recorded_edit(self, row: TrialRow) -> str:
        proposed = self.ledger.stream(row.trial_id)[0]
        digest = proposed.edit_digest if isinstance(proposed, ev.TrialProposed) else None
        if not digest:
            return f"(trial #{row.seq} recorded no edit: {row.reason})"
        return self.ledger.get_blob(digest).decode(errors="replace")

    def _candidate(self, edits: list[EditBlock] | None, diff: str | None,
                   parents: list[str] | None) -> _Candidate:
        if edits and diff:
            raise ToolError("give edits or diff, not both")
        if not edits and not (diff and diff.strip()):
            raise ToolError("give edits (a list of {file, search, replace}) or diff (a unified diff)")
        refs = parents or ["best"]
        if len(refs) > 2:
            raise ToolError("at most two parents (the second one merges its surface in)")
        self._current()
        rows = [self._trial(r) for r in refs]
        if len({r.trial_id for r in rows}) != len(rows):
            raise ToolError("the two parents are the same trial")
        base = self._program(rows[0])
        try:
            if edits:
                program = apply_search_replace(base, [(e.file, e.search, e.replace) for e in edits])
            else:
                program = apply_unified_diff(base, diff or "")
        except EditError as e:
            return _Candidate(parents=rows, parent_program=base, error=str(e))
        return _Candidate(parents=rows, parent_program=base, program=program)

    def _also(self, parents: list[TrialRow]) -> tuple[str, ...]:
        return tuple(r.surface for r in parents[1:] if r.surface)

    def _scoped_duckdb(self, needed: int) -> GuardedDuckDB:
        """The guarded DuckDB holding only this search's rows (the best's, with lineage off).

        Copying the rows out keeps the rest of the ledger unreachable whatever the
        SQL says; the copy runs the caller's SQL under :attr:`sql_limits`. A copy
        that holds the log up to ``needed`` (all the caller was shown) answers at
        once, and if the log has moved since, a fresher one is made in the
        background, so a busy log does not make every query wait for a copy.
        """
        head = self.ledger.head()
        best = self._scope_best()
        with self._sql_lock:
            copy, at = self._guarded, self._guarded_at
        if copy is not None and at is not None and at[0] >= needed and at[1] == best:
            if at != (head, best):
                threading.Thread(target=self._copy_rows, args=(False,), name="arl-sql-copy", daemon=True).start()
            return copy
        copied = self._copy_rows(True)
        assert copied is not None
        return copied

    def _scope_best(self) -> str:
        """With lineage off, the best trial (the only one sql may show); with it on, "" (all are shown).

        Only the control arm takes the tools' lock here: with lineage on, sql never waits
        for a submission being recorded."""
        if self.lineage_on:
            return ""
        with self._lock:
            return self._current().searches[self.search_id].best_trial or ""

    def _copy_rows(self, wait: bool) -> GuardedDuckDB | None:
        """Copy this search's rows as of now into the guarded DuckDB; one copy at a time
        (without ``wait``, None when another one is under way)."""
        if not self._copy_lock.acquire(blocking=wait):
            return None
        try:
            head = self.ledger.head()
            best = self._scope_best()
            if self._guarded is not None and self._guarded_at == (head, best):
                return self._guarded
            if self._duck is None:
                self._duck = connect(self.ledger)
            else:
                refresh(self._duck, self.ledger)
            if self.lineage_on:
                scopes = {"trials": "search = $s", "lineage": "search = $s", "checks": "search = $s",
                          "events": "search_id = $s", "agent_calls": "search = $s", "searches": "search = $s"}
            else:
                scopes = {"trials": "trial_id = $b", "lineage": "false", "checks": "trial = $b",
                          "events": "stream = $b", "agent_calls": "trial_id = $b", "searches": "search = $s"}
            views = {view: (where, {k: v for k, v in (("s", self.search_id), ("b", best)) if f"${k}" in where})
                     for view, where in scopes.items()}
            if self._guarded is None:
                guarded = GuardedDuckDB.copy_of(self._duck, views, self.sql_limits)
            else:
                guarded = self._guarded
                guarded.load(rows_of(self._duck, views))
            with self._sql_lock:
                self._guarded, self._guarded_at = guarded, (head, best)
            return guarded
        finally:
            self._copy_lock.release()


class McpSeat:
    """A specialist's seat in ``arl run --agents mcp``: its proposals arrive through ``arl mcp``.

    The driver keeps measuring the baseline, running workers and counting the
    trial budget; this seat proposes nothing itself and only waits (briefly, so
    Ctrl-C stays prompt) for the log to move.
    """

    backend = "mcp"

    def __init__(self, surface: Surface, ledger: Ledger) -> None:
        self.surface = surface
        self.name = surface.name
        self.ledger = ledger

    def propose(self, view: LineageView) -> None:
        self.ledger.wait(self.ledger.head(), 1.0)
        return None


def _only(rows: list[TrialRow], ref: str) -> TrialRow:
    if len(rows) == 1:
        return rows[0]
    if not rows:
        raise ToolError(f"no trial {ref!r} in this search; the lineage tool lists them")
    raise ToolError(f"{ref!r} matches {len(rows)} trials; give more of the id")


def _trial_json(row: TrialRow) -> dict[str, Any]:
    return {"trial_id": row.trial_id, "seq": row.seq, "agent": row.agent, "status": row.status,
            "label": row.label.value if row.label else None, "score": row.score,
            "delta_vs_best": row.delta_vs_best, "reason": row.reason, "hypothesis": row.hypothesis,
            "parents": list(row.parents)}


def _page(text: str, offset: int, limit: int) -> dict[str, Any]:
    limit = max(1, min(limit, MAX_TEXT))
    end = offset + limit
    return {"text": text[offset:end], "offset": offset,
            "next_offset": end if end < len(text) else None, "total_chars": len(text)}


def _cell(value: Any) -> Any:
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, datetime | date):
        return value.isoformat()
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= CELL_CHARS else text[: CELL_CHARS - 1] + "…"


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
