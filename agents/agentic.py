"""The ``agentic`` backend: a multi-turn tool-using session per proposal.

Where the ``llm`` backend asks once, an agentic specialist holds a session
with an OpenAI-compatible chat model that may call the ledger tools
(:mod:`agents.tools`: lineage, sql, read_program, diff, check, submit) as many
times as its turn limit and token budget allow. The session ends when the
model calls ``submit`` — that proposal goes back to the search driver, which
records it like any other — or when the turns or tokens run out, which is an
``invalid_edit`` rejection: like an unusable single-shot reply, the agent was
asked for an edit and gave none, so the trial budget is charged (a model that
never submits cannot spin a search forever for free).

Every request, reply, tool call and tool result of the session is one
transcript blob the proposal points to (``agent_call_digest``), with the
session's summed ``usage`` at the top, so token accounting and the
``agent_calls`` view read it like a single call, and :class:`TranscriptReplay`
re-drives the session without the model. A malformed tool call, an unknown
tool or a tool that fails is answered with an error message the model can act
on, and recorded; nothing the model sends can crash the loop.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from arl.agents.base import Proposal
from arl.agents.lineage import LineageView
from arl.agents.llm import (
    ChatBackend,
    ChatCall,
    LLMError,
    LLMMisconfigured,
    LLMUnavailable,
    ReplyTooLarge,
    Usage,
)
from arl.agents.tools import SPECS, LedgerTools, ToolError
from arl.agents.usage import TokenMeter
from arl.ledger.errors import ArlError
from arl.ledger.events import Label
from arl.ledger.projections import Projector
from arl.ledger.store import Ledger
from arl.tasks.knobs import PLACE
from arl.tasks.manifest import Surface, Task

#: Tools a session may call: all but ``wait`` (the session's own trial is only
#: recorded once the session has ended, so there is nothing of its own to wait for).
SESSION_TOOLS = ("lineage", "sql", "read_program", "diff", "check", "submit")
#: Default per-session token budget (prompt + completion, summed over the session's calls).
SESSION_TOKENS = 60_000
#: Files of the surface longer than this are not inlined in the first message (read_program pages them).
INLINE_FILE_CHARS = 6_000
#: Longest tool result handed back to the model (the tools page their output below this).
RESULT_CHARS = 20_000
REASON_CHARS = 300

_NUDGE = ("You called no tool. Work only through the tools: look with lineage, read_program, diff "
          "or sql, try an edit with check, and end the session with one call to submit.")


class ToolCall(msgspec.Struct, kw_only=True):
    """One tool call of a session, as the model wrote it and as it was answered."""

    turn: int
    call_id: str
    name: str
    #: The arguments exactly as the model sent them (a JSON string, or whatever it was).
    arguments: Any = None
    result: dict[str, Any] | None = None
    error: str | None = None


class Transcript(msgspec.Struct, kw_only=True):
    """A whole agentic session: the agent-call blob of its proposal."""

    backend: str = "agentic"
    url: str
    model: str
    specialist: str
    surface: str
    turn_limit: int
    session_tokens: int | None
    #: Summed over the session's calls (the agent_calls view and token budgets read this).
    usage: Usage = Usage()
    calls: list[ChatCall] = []
    tool_calls: list[ToolCall] = []
    #: "submitted", or why the session ended without a submission.
    outcome: str = ""


class AgenticSpecialist:
    """A specialist whose proposals come out of a multi-turn tool-using model session."""

    backend = "agentic"

    def __init__(
        self,
        name: str,
        surface: Surface | str,
        task: Task,
        client: ChatBackend,
        put_blob: Callable[[bytes], str],
        tools: LedgerTools,
        *,
        turns: int = 8,
        session_tokens: int | None = SESSION_TOKENS,
        budget_tokens: int | None = None,
        spent: Callable[[], int] = lambda: 0,
    ) -> None:
        if turns < 1:
            raise ArlError(f"--turns must be at least 1, not {turns}")
        self.name = name
        self.surface = task.surface(surface) if isinstance(surface, str) else surface
        self.task = task
        self.client = client
        self.put_blob = put_blob
        self.tools = tools
        # In a session, submit hands the proposal back here; the driver records it.
        self.tools.sink = self._take
        self.turns = turns
        self.session_tokens = session_tokens
        self.budget_tokens = budget_tokens
        self.spent = spent
        self._specs = [SPECS[n].openai() for n in SESSION_TOOLS]
        self._taken: Proposal | None = None

    # -- the session -------------------------------------------------------------------------

    def propose(self, view: LineageView) -> Proposal:
        self._taken = None
        transcript = Transcript(url=self.client.url, model=self.client.model, specialist=self.name,
                                surface=self.surface.name, turn_limit=self.turns,
                                session_tokens=self.session_tokens)
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": self._role()},
            {"role": "user", "content": self._brief(view)},
        ]
        for turn in range(1, self.turns + 1):
            stop = self._over_budget(transcript)
            if stop:
                return self._finish(transcript, stop)
            try:
                # A copy: the conversation grows after the call, the record of the call must not.
                call = self.client.complete(list(messages), tools=self._specs)
            except LLMMisconfigured:
                raise  # retrying cannot change it: the search stops with this one line
            except LLMError as e:
                self._count(transcript, e.call)
                label = Label.INVALID_EDIT if isinstance(e, ReplyTooLarge) else Label.INFRA_ERROR
                return self._finish(transcript, f"model call failed: {e}", label=label)
            self._count(transcript, call)
            message = _message(call)
            calls = _tool_calls(message, turn)
            messages.append(_assistant(message, calls))
            if not calls:
                transcript.tool_calls.append(ToolCall(turn=turn, call_id="", name="",
                                                      error="the reply called no tool"))
                messages.append({"role": "user", "content": _NUDGE})
                continue
            for call_id, name, raw in calls:
                record = ToolCall(turn=turn, call_id=call_id, name=name, arguments=raw)
                transcript.tool_calls.append(record)
                if self._taken is not None:
                    record.error = "not run: the session ended at submit"
                else:
                    self._run(record)
                content = record.result if record.error is None else {"error": record.error}
                messages.append({"role": "tool", "tool_call_id": call_id, "name": name,
                                 "content": _bounded(content)})
            if self._taken is not None:
                transcript.outcome = "submitted"
                proposal = self._taken
                proposal.agent_call_digest = self._record(transcript)
                return proposal
        errors = [t.error for t in transcript.tool_calls if t.error]
        last = f"; last tool error: {errors[-1]}" if errors else ""
        return self._finish(transcript, f"turn limit ({self.turns}) reached without a submission{last}")

    def _run(self, record: ToolCall) -> None:
        if record.name not in SESSION_TOOLS:
            known = ", ".join(SESSION_TOOLS)
            record.error = (f"unknown tool {record.name!r}; call one of: {known}" if record.name
                            else f"the tool call names no tool; call one of: {known}")
            return
        if record.name != "submit" and isinstance(self.client, TranscriptReplay):
            # A replay serves what the tools answered then: the ledger has moved on since.
            recorded = self.client.recorded(record.turn, record.call_id, record.name)
            if recorded is not None:
                record.result, record.error = recorded.result, recorded.error
                return
        try:
            arguments = _arguments(record.arguments)
            record.result = self.tools.call(record.name, arguments)
        except ToolError as e:
            record.error = str(e)
        except ArlError as e:  # the store or a program blob failed: tell the model, keep going
            record.error = f"{type(e).__name__}: {e}"

    def _take(self, proposal: Proposal, call: Any) -> dict[str, Any]:
        proposal.backend = self.backend
        self._taken = proposal
        if proposal.rejected is not None:
            return {"status": "accepted", "note": f"recorded as {proposal.rejected[0].value}: "
                                                  f"{proposal.rejected[1]}; the session ends here"}
        return {"status": "accepted", "note": "the search records and runs it; the session ends here"}

    def _over_budget(self, transcript: Transcript) -> str | None:
        used = transcript.usage.total_tokens or 0
        if self.session_tokens is not None and used >= self.session_tokens:
            return f"session token budget ({self.session_tokens}) spent without a submission"
        if self.budget_tokens is not None and self.spent() + used >= self.budget_tokens:
            return f"the search's token budget ({self.budget_tokens}) ran out during the session"
        return None

    def _count(self, transcript: Transcript, call: ChatCall) -> None:
        transcript.calls.append(call)
        u, add = transcript.usage, call.usage
        total = add.total_tokens if add.total_tokens is not None else \
            (add.prompt_tokens or 0) + (add.completion_tokens or 0)
        transcript.usage = Usage(prompt_tokens=(u.prompt_tokens or 0) + (add.prompt_tokens or 0),
                                 completion_tokens=(u.completion_tokens or 0) + (add.completion_tokens or 0),
                                 total_tokens=(u.total_tokens or 0) + total)

    def _finish(self, transcript: Transcript, why: str, *, label: Label = Label.INVALID_EDIT) -> Proposal:
        transcript.outcome = why
        parents = (self.tools.state().searches[self.tools.search_id].best_trial,)
        return Proposal(agent=self.name, surface=self.surface.name, hypothesis="(no submission)",
                        parents=tuple(p for p in parents if p), backend=self.backend,
                        rejected=(label, _clip(why, REASON_CHARS)), agent_call_digest=self._record(transcript))

    def _record(self, transcript: Transcript) -> str:
        return self.put_blob(msgspec.json.encode(transcript))

    # -- what the model is told ----------------------------------------------------------------

    def _role(self) -> str:
        t, s = self.task, self.surface
        better = "lower" if t.objective.direction == "min" else "higher"
        b = t.budgets
        knobs = "".join(f"\n- {k.name} in {k.file} ({k.type}"
                        + (f", {k.min:g}..{k.max:g}" if k.min is not None and k.max is not None else "")
                        + (f", one of {k.choices}" if k.choices else "") + (f"; {PLACE[k.where]}" if k.where != "constant" else "") + ")" for k in s.knobs)
        lines = [
            f"You are the {s.name} specialist of an automated research loop improving the training "
            f"recipe of task {t.name!r}: {t.description}",
            f"Objective: {t.objective.metric}, {better} is better; differences below "
            f"{t.objective.noise_floor:g} are noise. Budgets (timed from outside): training {b.train_s:g} s, "
            f"evaluation {b.eval_s:g} s, memory {b.memory_mb} MB; going over fails the trial.",
            f"Your surface {s.name!r}: {s.description} You may edit only: {', '.join(s.files)}."
            + (f" Never edit: {', '.join(t.protected)}." if t.protected else ""),
        ]
        if knobs:
            lines.append("Knobs of your surface:" + knobs)
        lines += [
            f"You have tools and at most {self.turns} turns. Look before you change: lineage (the search so "
            "far), read_program and diff (any trial), sql (the search's tables); check (preflight an edit).",
            "End the session with exactly one call to submit: a one-sentence hypothesis, expected_delta, "
            'and edits [{"file": ..., "search": "<exact text, once>", "replace": ...}] against the best.',
        ]
        return "\n".join(lines)

    def _brief(self, view: LineageView) -> str:
        parts = [view.render()]
        program = view.best_program
        for path in self.surface.files:
            data = program.get(path)
            if data is None:
                continue
            text = data.decode(errors="replace")
            if len(text) > INLINE_FILE_CHARS:
                parts.append(f"## {path} ({len(text)} characters: read it with read_program)")
            else:
                parts.append(f"## {path} (in the current best)\n```\n{text.rstrip()}\n```")
        parts.append("Propose one change now: use the tools, then submit.")
        return "\n\n".join(parts)


def _message(call: ChatCall) -> dict[str, Any]:
    try:
        message = call.response["choices"][0]["message"]  # type: ignore[index]
    except (KeyError, IndexError, TypeError):
        return {}
    return message if isinstance(message, dict) else {}


def _tool_calls(message: dict[str, Any], turn: int) -> list[tuple[str, str, Any]]:
    """(id, name, raw arguments) of each tool call in a reply; ids made up where missing."""
    raw = message.get("tool_calls")
    if not raw and isinstance(message.get("function_call"), dict):  # the older single-call form
        raw = [{"function": message["function_call"]}]
    if not isinstance(raw, list):
        return []
    out = []
    for i, tc in enumerate(raw):
        fn = tc.get("function") if isinstance(tc, dict) else None
        fn = fn if isinstance(fn, dict) else {}
        call_id = tc.get("id") if isinstance(tc, dict) and isinstance(tc.get("id"), str) and tc.get("id") \
            else f"call_{turn}_{i}"
        name = fn.get("name") if isinstance(fn.get("name"), str) else ""
        out.append((call_id, name, fn.get("arguments")))
    return out


def _assistant(message: dict[str, Any], calls: list[tuple[str, str, Any]]) -> dict[str, Any]:
    """The reply as it goes back into the conversation (ids filled in, arguments as JSON text)."""
    content = message.get("content")
    out: dict[str, Any] = {"role": "assistant", "content": content if isinstance(content, str) else ""}
    if calls:
        out["tool_calls"] = [
            {"id": cid, "type": "function",
             "function": {"name": name, "arguments": raw if isinstance(raw, str) else json.dumps(raw)}}
            for cid, name, raw in calls
        ]
    return out


def _arguments(raw: Any) -> dict[str, Any]:
    if raw is None or raw == "":
        return {}
    if isinstance(raw, dict):
        return raw
    if not isinstance(raw, str):
        raise ToolError(f"the arguments must be a JSON object, not {type(raw).__name__}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ToolError(f"the arguments are not valid JSON ({e.msg} at char {e.pos}); "
                        "send one JSON object") from None
    if not isinstance(value, dict):
        raise ToolError(f"the arguments must be a JSON object, not {type(value).__name__}")
    return value


def _bounded(content: Any) -> str:
    text = json.dumps(content, ensure_ascii=False, default=str)
    if len(text) <= RESULT_CHARS:
        return text
    return json.dumps({"error": f"the result is {len(text)} characters, over {RESULT_CHARS}; "
                                "ask for a smaller page (limit) or fewer rows"})


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- replay and the team ------------------------------------------------------------------------


class TranscriptReplay:
    """Serves the model calls recorded in agentic transcripts, in order: a session without the model.

    ``digests``: one specialist's proposals' transcript blobs, in the order they
    were made. ``diverged`` counts calls whose conversation differed from the
    recorded one (the ledger it ran against was not the same).
    """

    def __init__(self, get_blob: Callable[[str], bytes], digests: Sequence[str]) -> None:
        self._transcripts: list[Transcript] = []
        self._calls: list[tuple[int, ChatCall]] = []  # (transcript index, call)
        for digest in digests:
            try:
                transcript = msgspec.json.decode(get_blob(digest), type=Transcript)
            except msgspec.DecodeError:
                raise ArlError(f"blob {digest[:16]}… is not an agentic transcript; "
                               "replay needs the agentic backend's agent-call blobs") from None
            self._calls += [(len(self._transcripts), c) for c in transcript.calls]
            self._transcripts.append(transcript)
        self._current = -1
        self._next = 0
        self.diverged = 0
        self.url = self._calls[0][1].url if self._calls else "replay"
        self.model = self._calls[0][1].model if self._calls else "replay"

    def recorded(self, turn: int, call_id: str, name: str) -> ToolCall | None:
        """The recorded answer to a tool call of the session being replayed (reads are served, not re-run)."""
        if self._current < 0:
            return None
        return next((t for t in self._transcripts[self._current].tool_calls
                     if (t.turn, t.call_id, t.name) == (turn, call_id, name)), None)

    def complete(self, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None = None,
                 max_tokens: int | None = None) -> ChatCall:
        if self._next >= len(self._calls):
            raise LLMUnavailable(
                f"the replay has no more recorded calls ({len(self._calls)} were recorded); "
                "replay no more sessions than the search made",
                ChatCall(backend="replay", url=self.url, model=self.model, request={"messages": messages}))
        self._current, call = self._calls[self._next]
        self._next += 1
        if call.request.get("messages") != messages:
            self.diverged += 1
        if call.error is not None:
            raise (ReplyTooLarge if call.error_kind == ReplyTooLarge.kind else LLMUnavailable)(call.error, call)
        return call


def agentic_team(
    task: Task,
    ledger: Ledger,
    search_id: str,
    client: ChatBackend,
    *,
    projector: Projector,
    lineage: bool = True,
    turns: int = 8,
    session_tokens: int | None = SESSION_TOKENS,
    budget_tokens: int | None = None,
) -> list[AgenticSpecialist]:
    """One agentic specialist per surface, sharing the model client and the search's projector."""
    meter = TokenMeter(ledger, search_id)
    team = []
    for s in task.surfaces:
        tools = LedgerTools(ledger, task, search_id, specialist=s.name, surface=s, lineage=lineage,
                            backend=AgenticSpecialist.backend, projector=projector)
        team.append(AgenticSpecialist(s.name, s, task, client, ledger.put_blob, tools, turns=turns,
                                      session_tokens=session_tokens, budget_tokens=budget_tokens,
                                      spent=meter.spent))
    return team
