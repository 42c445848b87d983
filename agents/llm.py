"""The ``llm`` backend: a specialist that asks an OpenAI-compatible chat model for an edit.

Any server with ``/v1/chat/completions`` works (vLLM, llama.cpp, Ollama, hosted
APIs). Every call — request, reply or error, token usage, attempts — is kept
as one blob the proposal points to, so a search can be replayed without the
model (:class:`ReplayClient`). Whatever the model answers becomes a proposal:
a program, or a rejection with a label and a one-line reason; nothing a model
writes can stop the loop.
"""

from __future__ import annotations

import email.utils
import json
import math
import os
import random
import re
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx
import msgspec

from arl.agents.base import Proposal
from arl.agents.edits import EditError, apply_search_replace, apply_unified_diff
from arl.agents.lineage import LineageView
from arl.ledger.errors import ArlError
from arl.ledger.events import Label
from arl.ledger.programs import read_folder
from arl.tasks.knobs import PLACE
from arl.tasks.manifest import Surface, Task

#: Environment variable holding the API key (sent as a Bearer token only when set).
API_KEY_ENV = "ARL_LLM_API_KEY"
#: Longest hypothesis kept from a reply (events stay small; the full reply is in the blob).
HYPOTHESIS_CHARS = 500
#: Longest rejection reason.
REASON_CHARS = 300


class LLMError(ArlError):
    """A model call failed; ``call`` holds what was sent and received, and this message."""

    kind = "error"

    def __init__(self, message: str, call: ChatCall) -> None:
        message = " ".join(message.split())
        super().__init__(message)
        call.error, call.error_kind = message, self.kind
        self.call = call


class LLMUnavailable(LLMError):
    """The server could not be reached or kept failing: not the recipe's fault (infra_error)."""

    kind = "unavailable"


class LLMMisconfigured(LLMUnavailable):
    """The server refused the request for a reason retrying cannot change (a 4xx: a bad key, an
    unknown model, a context too small): the search stops at once with this one line."""

    kind = "config"


class ContextTooSmall(LLMMisconfigured):
    """The prompt and the reply cap are over the model's context, as the server said."""

    def __init__(self, message: str, call: ChatCall, *, context: int, prompt_tokens: int,
                 completion_tokens: int) -> None:
        super().__init__(message, call)
        self.context, self.prompt_tokens, self.completion_tokens = context, prompt_tokens, completion_tokens


class ReplyTooLarge(LLMError):
    """The reply was over the byte cap: the model's fault, labelled like a bad edit."""

    kind = "too_large"


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None


class Retry(msgspec.Struct, frozen=True, kw_only=True):
    attempt: int
    reason: str
    wait_s: float


class ChatCall(msgspec.Struct, kw_only=True):
    """One model call as recorded in the blob store (the agent-call blob's JSON)."""

    backend: str = "llm"
    url: str
    model: str
    request: dict[str, Any]
    #: The server's JSON reply (or ``{"body": text}`` when it was not JSON); None without a reply.
    response: dict[str, Any] | None = None
    #: Why the call failed, as reported (one line); None when it succeeded.
    error: str | None = None
    #: "unavailable" (labelled infra_error) or "too_large" (invalid_edit); lets a replay fail alike.
    error_kind: str | None = None
    usage: Usage = Usage()
    attempts: int = 0
    seconds: float = 0.0
    retries: list[Retry] = []

    @property
    def text(self) -> str:
        """The assistant message of the first choice ("" when there is none)."""
        try:
            content = self.response["choices"][0]["message"]["content"]  # type: ignore[index]
        except (KeyError, IndexError, TypeError):
            return ""
        return content if isinstance(content, str) else ""

    @property
    def finish_reason(self) -> str | None:
        try:
            return self.response["choices"][0].get("finish_reason")  # type: ignore[index]
        except (KeyError, IndexError, TypeError, AttributeError):
            return None


class ChatBackend(Protocol):
    """What a specialist needs from a model: a live client or a replay of recorded calls."""

    url: str
    model: str

    def complete(self, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None = None,
                 max_tokens: int | None = None) -> ChatCall: ...


def endpoint_base(url: str) -> str:
    """``http://host:port``, ``…/v1`` or ``…/v1/chat/completions`` → ``…/v1``."""
    base = url.strip().rstrip("/")
    if not re.match(r"^https?://[^/]+", base):
        raise ArlError(f"--llm-url {url!r} is not an http(s) URL; "
                       "give the server root or its /v1, e.g. http://127.0.0.1:8080/v1")
    base = re.sub(r"/chat/completions$", "", base)
    return base if base.endswith("/v1") else base + "/v1"


class ChatClient:
    """An OpenAI-compatible chat client with explicit timeouts, a deadline and retries.

    Retried, with exponential backoff and jitter: HTTP 429 (waiting Retry-After
    when the server sends it), 5xx, connection failures and timeouts. Other
    HTTP errors (bad model name, bad key) fail at once: retrying cannot help.
    """

    def __init__(
        self,
        url: str,
        model: str,
        *,
        read_timeout_s: float = 120.0,
        connect_timeout_s: float = 5.0,
        write_timeout_s: float = 30.0,
        pool_timeout_s: float = 5.0,
        deadline_s: float = 600.0,
        max_attempts: int = 4,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        max_tokens: int = 2048,
        max_reply_bytes: int = 1 << 20,
        temperature: float | None = 0.7,
        seed: int | None = None,
        api_key: str | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ArlError("max_attempts must be at least 1")
        self.base = endpoint_base(url)
        self.url = self.base + "/chat/completions"
        self.model = model
        self.timeout = httpx.Timeout(
            connect=connect_timeout_s, read=read_timeout_s, write=write_timeout_s, pool=pool_timeout_s
        )
        self.deadline_s = deadline_s
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_tokens = max_tokens
        self.max_reply_bytes = max_reply_bytes
        self.temperature = temperature
        self.seed = seed
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        # The key travels in a header only: it is never part of the recorded request.
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(timeout=self.timeout, headers=headers)
        self._jitter = random.Random()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request_body(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
                     max_tokens: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "messages": messages,
                                "max_tokens": max_tokens or self.max_tokens}
        if tools:  # OpenAI tool calling: the model may answer with tool_calls instead of content
            body["tools"] = tools
            body["tool_choice"] = "auto"
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.seed is not None:
            body["seed"] = self.seed
        return body

    def complete(self, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None = None,
                 max_tokens: int | None = None) -> ChatCall:
        """One chat completion; raises :class:`LLMUnavailable` (:class:`LLMMisconfigured` for a
        request the server will never take) or :class:`ReplyTooLarge`.

        ``tools``: OpenAI function specs offered to the model (multi-turn agents);
        ``max_tokens``: this call's reply cap, when lower than the client's.
        """
        call = ChatCall(url=self.url, model=self.model, request=self.request_body(messages, tools, max_tokens))
        started = time.monotonic()
        deadline = started + self.deadline_s
        try:
            return self._attempts(call, deadline)
        finally:
            call.seconds = round(time.monotonic() - started, 3)

    def _attempts(self, call: ChatCall, deadline: float) -> ChatCall:
        while True:
            call.attempts += 1
            retry_after: float | None = None
            try:
                status, headers, body = self._post(call, deadline)
            except (httpx.TimeoutException, httpx.TransportError) as e:
                problem = _transport_problem(e, self.timeout)
            else:
                if 200 <= status < 300:
                    return self._accept(call, body)
                call.response = _json_or_body(body)
                problem = f"HTTP {status}{_excerpt(body)}"
                if status != 429 and status < 500:
                    _refuse(self.url, status, problem, call)
                if status == 429:
                    retry_after = _retry_after(headers.get("retry-after"))
            left = deadline - time.monotonic()
            if call.attempts >= self.max_attempts or left <= 0:
                raise LLMUnavailable(
                    f"the model server at {self.url} failed {call.attempts} attempt(s), last: {problem}; "
                    "check that it is running and the --llm-url, or raise the timeouts", call)
            wait = retry_after if retry_after is not None else self._backoff(call.attempts)
            if wait > left:
                who = "the server asked for" if retry_after is not None else "the backoff is"
                raise LLMUnavailable(
                    f"the model server at {self.url} failed {call.attempts} attempt(s), last: {problem}; "
                    f"{who} {wait:.1f} s more, past the call deadline of {self.deadline_s:g} s; "
                    "retry later or raise the deadline", call)
            call.retries.append(Retry(attempt=call.attempts, reason=problem, wait_s=round(wait, 3)))
            time.sleep(wait)

    def _backoff(self, attempt: int) -> float:
        return min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)) * self._jitter.uniform(0.5, 1.0)

    def _post(self, call: ChatCall, deadline: float) -> tuple[int, httpx.Headers, bytes]:
        left = deadline - time.monotonic()
        # The read timeout is per socket read; the deadline bounds the whole call.
        timeout = httpx.Timeout(
            connect=min(self.timeout.connect or left, left), read=min(self.timeout.read or left, left),
            write=min(self.timeout.write or left, left), pool=min(self.timeout.pool or left, left),
        )
        with self._http.stream("POST", self.url, json=call.request, timeout=timeout) as r:
            declared = int(r.headers.get("content-length") or 0)
            if declared > self.max_reply_bytes:
                self._too_large(call, declared)
            chunks: list[bytes] = []
            size = 0
            for chunk in r.iter_bytes():
                chunks.append(chunk)
                size += len(chunk)
                if size > self.max_reply_bytes:
                    call.response = {"body": b"".join(chunks)[:4096].decode(errors="replace")}
                    self._too_large(call, size)
                if time.monotonic() > deadline:
                    raise httpx.ReadTimeout(f"call deadline of {self.deadline_s:g} s passed while reading")
            return r.status_code, r.headers, b"".join(chunks)

    def _too_large(self, call: ChatCall, size: int) -> None:
        raise ReplyTooLarge(
            f"the reply from {self.url} is over {self.max_reply_bytes} bytes; lower max_tokens "
            "or raise the reply cap", call)

    def _accept(self, call: ChatCall, body: bytes) -> ChatCall:
        try:
            call.response = json.loads(body)
            if not isinstance(call.response, dict):
                raise ValueError("not an object")
        except ValueError:
            call.response = {"body": body[:4096].decode(errors="replace")}
            raise LLMUnavailable(
                f"the server at {self.url} answered with something that is not a JSON object "
                f"({_excerpt(body).strip(' :')}); is --llm-url an OpenAI-compatible endpoint?", call) from None
        usage = call.response.get("usage")
        if isinstance(usage, dict):
            call.usage = Usage(**{k: v for k, v in usage.items()
                                  if k in ("prompt_tokens", "completion_tokens", "total_tokens")
                                  and isinstance(v, int)})
        return call


def _transport_problem(e: Exception, timeout: httpx.Timeout) -> str:
    if isinstance(e, httpx.ReadTimeout):
        return f"no reply within the read timeout of {timeout.read:g} s"
    if isinstance(e, httpx.ConnectTimeout):
        return f"no connection within {timeout.connect:g} s"
    if isinstance(e, httpx.ConnectError):
        return f"cannot connect ({' '.join(str(e).split()) or type(e).__name__})"
    return f"{type(e).__name__}: {' '.join(str(e).split())[:120]}"


def _excerpt(body: bytes) -> str:
    text = " ".join(body[:200].decode(errors="replace").split())
    return f": {text}" if text else ""


def _json_or_body(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    return data if isinstance(data, dict) else {"body": body[:4096].decode(errors="replace")}


_CONTEXT = re.compile(r"maximum context length is (\d+) tokens.*?(\d+) in the messages, (\d+) in the completion",
                      re.S)


def _refuse(url: str, status: int, problem: str, call: ChatCall) -> None:
    """A 4xx other than 429: retrying cannot change it. Raise what says why and what to do."""
    error = call.response.get("error") if isinstance(call.response, dict) else None
    message = error.get("message", "") if isinstance(error, dict) else str(error or call.response or "")
    m = _CONTEXT.search(message)
    if m:
        context, prompt, reply = (int(g) for g in m.groups())
        raise ContextTooSmall(
            f"the model at {url} has a context of {context} tokens; the prompt took {prompt} and the "
            f"reply cap {reply}: start the server with a larger context (llama.cpp: --n_ctx 8192; "
            f"vLLM: --max-model-len) or lower --llm-max-tokens", call,
            context=context, prompt_tokens=prompt, completion_tokens=reply)
    raise LLMMisconfigured(f"the model server at {url} refused the request ({problem}); " + _fix_for(status), call)


def _fix_for(status: int) -> str:
    if status in (401, 403):
        return f"set {API_KEY_ENV} to a key the server accepts"
    if status == 404:
        return "check --llm-url (the server root or its /v1) and --llm-model"
    return "check --llm-model and the server's log"


def _retry_after(value: str | None) -> float | None:
    """Retry-After as seconds (it may also be an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


class ReplayClient:
    """Serves recorded calls instead of asking a model: for re-driving a search.

    ``digests`` are the agent-call blobs of one specialist's proposals, in the
    order they were made; each :meth:`complete` returns the next recorded call
    unchanged (so the replayed proposal records the very same blob).
    ``diverged`` counts calls whose prompt differed from the recorded one.
    """

    def __init__(self, get_blob: Callable[[str], bytes], digests: Sequence[str]) -> None:
        self._get_blob = get_blob
        self._digests = list(digests)
        self._next = 0
        self.diverged = 0
        first = self._load(self._digests[0]) if self._digests else None
        self.url = first.url if first else "replay"
        self.model = first.model if first else "replay"

    def _load(self, digest: str) -> ChatCall:
        try:
            return msgspec.json.decode(self._get_blob(digest), type=ChatCall)
        except msgspec.DecodeError:
            raise ArlError(f"blob {digest[:16]}… is not a recorded model call; "
                           "replay needs the llm backend's agent-call blobs") from None

    def complete(self, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None = None,
                 max_tokens: int | None = None) -> ChatCall:
        if self._next >= len(self._digests):
            raise LLMUnavailable(
                f"the replay has no more recorded calls ({len(self._digests)} were recorded); "
                "replay no more trials than the search made",
                ChatCall(backend="replay", url=self.url, model=self.model, request={"messages": messages}))
        call = self._load(self._digests[self._next])
        self._next += 1
        if call.request.get("messages") != messages:
            self.diverged += 1
        if call.error is not None:
            raise (ReplyTooLarge if call.error_kind == ReplyTooLarge.kind else LLMUnavailable)(call.error, call)
        return call


# --- the specialist ------------------------------------------------------------------


class _Unusable(Exception):
    """The reply cannot become a program; args: (reason, hypothesis read so far)."""


#: Tokens kept free beside the prompt and the reply (chat template, estimate error).
FIT_MARGIN = 64
#: The smallest reply cap a fitted prompt leaves (a search/replace edit needs room).
MIN_REPLY_TOKENS = 256


class _Fit(msgspec.Struct, kw_only=True):
    """What the server said of its context, for cutting prompts to it."""

    context: int
    reply: int
    chars_per_token: float

    def tokens(self, text: str) -> int:
        return math.ceil(len(text) / self.chars_per_token)


class LLMSpecialist:
    """A specialist whose proposals come from a chat model (or a replay of one)."""

    backend = "llm"

    def __init__(
        self,
        name: str,
        surface: Surface | str,
        task: Task,
        client: ChatBackend,
        put_blob: Callable[[bytes], str],
    ) -> None:
        self.name = name
        self.surface = task.surface(surface) if isinstance(surface, str) else surface
        self.task = task
        self.client = client
        self.put_blob = put_blob
        #: The model's context once the server named it (None: not known, the prompt is not cut).
        self._fit: _Fit | None = None

    def messages(self, view: LineageView, program: dict[str, bytes]) -> list[dict[str, str]]:
        """The prompt: the role and rules as system message, files and lineage as user message.

        Once the model's context is known (:meth:`_ask` learns it from the server), the lineage
        view is cut at the end to leave room for the reply; the role and the files never are.
        """
        role, files, lineage = self._role(view), self._files(program), view.render()
        tail = "\n\nPropose one change now, in the reply format."
        if self._fit is not None:
            fixed = self._fit.tokens(role + files + tail)
            room = self._fit.context - self._fit.reply - FIT_MARGIN - fixed
            if room < 0:
                raise LLMMisconfigured(
                    f"the model at {self.client.url} has a context of {self._fit.context} tokens; the role "
                    f"and the files of surface {self.surface.name} alone take about {fixed}, with "
                    f"{self._fit.reply} for the reply: start the server with a larger context "
                    "(llama.cpp: --n_ctx 8192)", ChatCall(url=self.client.url, model=self.client.model, request={}))
            keep = int(room * self._fit.chars_per_token)
            if len(lineage) > keep:
                lineage = lineage[:keep] + "\n… (lineage cut to fit the model's context)"
        return [
            {"role": "system", "content": role},
            {"role": "user", "content": files + "\n\n" + lineage + tail},
        ]

    def _ask(self, view: LineageView, program: dict[str, bytes]) -> ChatCall:
        """One model call; a context the prompt does not fit is learned, and the prompt fitted once."""
        messages = self.messages(view, program)
        try:
            return self.client.complete(messages, max_tokens=self._fit.reply if self._fit else None)
        except ContextTooSmall as e:
            if self._fit is not None:
                raise  # already fitted to what the server said: the estimate is off, say so
            sent = sum(len(m["content"]) for m in messages)
            reply = min(e.completion_tokens, max(MIN_REPLY_TOKENS, (e.context - FIT_MARGIN) // 3))
            self._fit = _Fit(context=e.context, reply=reply, chars_per_token=sent / max(1, e.prompt_tokens))
            return self.client.complete(self.messages(view, program), max_tokens=reply)

    def propose(self, view: LineageView) -> Proposal:
        if view.best is not None and view.best_program:
            program, parents = dict(view.best_program), (view.best.trial_id,)
        else:
            program, parents = read_folder(self.task.recipe_dir), ()
        proposal = Proposal(agent=self.name, surface=self.surface.name, hypothesis="(no reply)",
                            parents=parents, backend=self.backend)
        try:
            call = self._ask(view, program)
        except LLMMisconfigured:
            raise  # no retry and no other proposal can change it: the search stops with this line
        except LLMError as e:
            proposal.agent_call_digest = self._record(e.call)
            if isinstance(e, ReplyTooLarge):
                proposal.hypothesis = "(reply too large)"
                proposal.rejected = (Label.INVALID_EDIT, _clip(str(e), REASON_CHARS))
            else:  # the model never answered: not the recipe's fault, not charged
                proposal.rejected = (Label.INFRA_ERROR, _clip(str(e), REASON_CHARS))
            return proposal
        proposal.agent_call_digest = self._record(call)
        try:
            hypothesis, delta, child = self._read(call, program)
        except _Unusable as e:
            reason, hypothesis = e.args
            proposal.hypothesis = _clip(hypothesis or "(unparseable reply)", HYPOTHESIS_CHARS)
            proposal.rejected = (Label.INVALID_EDIT, _clip(reason, REASON_CHARS))
            return proposal
        proposal.hypothesis = _clip(hypothesis or "(no hypothesis given)", HYPOTHESIS_CHARS)
        proposal.expected_delta = delta
        proposal.program = child
        return proposal

    def _record(self, call: ChatCall) -> str:
        return self.put_blob(msgspec.json.encode(call))

    def _read(self, call: ChatCall, program: dict[str, bytes]) -> tuple[str, float | None, dict[str, bytes]]:
        text = call.text.strip()
        cut = " (the reply was cut at max_tokens)" if call.finish_reason == "length" else ""
        if not text:
            raise _Unusable(f"empty reply from the model{cut}", "")
        reply, json_problem = _json_reply(text)
        diff = _diff_block(text)
        if reply is None and diff is None:
            problem = json_problem or "no JSON object and no diff block"
            raise _Unusable(f"unparseable reply: {problem}{cut}", _salvaged_hypothesis(text))
        if reply is not None:
            hypothesis = str(reply.get("hypothesis") or "").strip()
            delta = _number(reply.get("expected_delta"))
            edits = reply.get("edits")
            diff = reply["diff"] if isinstance(reply.get("diff"), str) else (diff if not edits else None)
        else:
            hypothesis, delta, edits = _prose_hypothesis(text), None, None
        try:
            if edits:
                child = apply_search_replace(program, _blocks(edits))
            elif diff:
                child = apply_unified_diff(program, diff)
            else:
                raise _Unusable(f"the reply has no edits{cut}", hypothesis)
        except EditError as e:
            raise _Unusable(f"{e}{cut}", hypothesis) from None
        return hypothesis, delta, child

    def _role(self, view: LineageView) -> str:
        t, s = self.task, self.surface
        better = "lower" if t.objective.direction == "min" else "higher"
        b, g = t.budgets, t.gates
        gates = []
        if g.artifact_bytes is not None:
            gates.append(f"code + compressed artifact at most {g.artifact_bytes} bytes")
        if g.accuracy is not None:
            gates.append(f"mean accuracy at least {g.accuracy} over {g.accuracy_seeds} seed(s)")
        knobs = "".join(
            f"\n- {k.name} in {k.file} ({k.type}"
            + (f", {k.min:g}..{k.max:g}" if k.min is not None and k.max is not None else "")
            + (f", one of {k.choices}" if k.choices else "") + (f"; {PLACE[k.where]}" if k.where != "constant" else "") + ")"
            for k in s.knobs
        )
        techniques = "".join(f"\n- {x.name}: {x.description}" for x in s.techniques if x.description)
        first = s.files[0] if s.files else "FILE"
        lines = [
            f"You are the {s.name} specialist of an automated research loop improving the training "
            f"recipe of task {t.name!r}: {t.description}",
            f"Objective: {t.objective.metric}, {better} is better; differences below "
            f"{t.objective.noise_floor:g} are noise.",
            f"Budgets, timed from outside the recipe: training {b.train_s:g} s, evaluation {b.eval_s:g} s, "
            f"hard limit {b.wallclock_s:g} s, memory {b.memory_mb} MB, {b.threads} thread(s). "
            "Going over a budget fails the trial.",
            f"Gates: {'; '.join(gates)}." if gates else "Gates: none.",
            f"Your surface {s.name!r}: {s.description} You may edit only: {', '.join(s.files)}. "
            + (f"Never edit: {', '.join(t.protected)}. " if t.protected else "")
            + "Edits to other files are rejected.",
        ]
        if knobs:
            lines.append("Knobs of your surface:" + knobs)
        if techniques:
            lines.append("Known techniques:" + techniques)
        lines += [
            "Propose exactly one change, small enough to judge, informed by the history you are shown.",
            "Reply with one JSON object and nothing else:",
            '{"hypothesis": "<why this should help, one sentence>", "expected_delta": <signed expected '
            f'change of {t.objective.metric}>, "edits": [{{"file": "{first}", "search": "<exact text '
            'copied from the file, occurring once>", "replace": "<new text>"}]}',
            "Alternatively: a first line 'Hypothesis: <one sentence>' followed by one ```diff block "
            "holding a unified diff (--- a/FILE, +++ b/FILE, @@ hunks).",
        ]
        return "\n".join(lines)

    def _files(self, program: dict[str, bytes]) -> str:
        parts = [f"# Files of your surface ({self.surface.name}) in the current best program"]
        for path in self.surface.files:
            data = program.get(path)
            if data is None:
                continue
            lang = "python" if path.endswith(".py") else ""
            parts.append(f"## {path}\n```{lang}\n{data.decode(errors='replace').rstrip()}\n```")
        return "\n\n".join(parts)


_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)


#: Opening braces tried per candidate text (a garbage reply can hold thousands).
_JSON_STARTS = 50
_HYPOTHESIS_FIELD = re.compile(r'"hypothesis"\s*:\s*"((?:[^"\\]|\\.)*)"')


def _json_reply(text: str) -> tuple[dict[str, Any] | None, str | None]:
    """The first JSON object in the reply (fenced or bare, trailing prose ignored), or why not."""
    candidates = [body for lang, body in _FENCE.findall(text) if lang.lower() in ("json", "")]
    candidates.append(text)
    decoder = json.JSONDecoder()
    problem = None
    for candidate in candidates:
        for _, m in zip(range(_JSON_STARTS), re.finditer(r"\{", candidate), strict=False):
            try:
                value, _end = decoder.raw_decode(candidate, m.start())
            except json.JSONDecodeError as e:
                if problem is None:
                    problem = f"invalid or partial JSON ({e.msg} at char {e.pos - m.start()})"
                continue
            if isinstance(value, dict) and ({"hypothesis", "edits", "diff"} & value.keys()):
                return value, None
            problem = problem or "a JSON object without hypothesis and edits"
    return None, problem


def _salvaged_hypothesis(text: str) -> str:
    """What a broken reply still says: a JSON hypothesis field or a 'Hypothesis:' line."""
    m = _HYPOTHESIS_FIELD.search(text)
    if m:
        try:
            return str(json.loads(f'"{m.group(1)}"'))
        except ValueError:
            return m.group(1)
    m = _HYPOTHESIS_LINE.search(text)
    return m.group(1).strip() if m else ""


def _diff_block(text: str) -> str | None:
    for lang, body in _FENCE.findall(text):
        if lang.lower() in ("diff", "patch", "udiff") or re.search(r"^--- .*\n\+\+\+ ", body, re.M):
            return body
    m = re.search(r"^--- .*\n\+\+\+ ", text, re.M)
    return text[m.start():] if m else None


def _blocks(edits: object) -> list[tuple[str, str, str]]:
    if not isinstance(edits, list):
        raise EditError("'edits' is not a list of {file, search, replace} objects")
    blocks = []
    for n, e in enumerate(edits, 1):
        if not isinstance(e, dict) or not isinstance(e.get("file"), str) or not isinstance(e.get("replace"), str):
            raise EditError(f"edit {n} needs a string 'file' and a string 'replace'")
        search = e.get("search", "")
        if not isinstance(search, str):
            raise EditError(f"edit {n}: 'search' must be a string")
        blocks.append((e["file"], search, e["replace"]))
    return blocks


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


_HYPOTHESIS_LINE = re.compile(r"^\W*hypothesis\W*[:\-]\s*(.+)$", re.I | re.M)


def _prose_hypothesis(text: str) -> str:
    m = _HYPOTHESIS_LINE.search(text)
    return m.group(1).strip() if m else _first_line(text)


def _first_line(text: str) -> str:
    for line in text.splitlines():
        line = line.strip().strip("`#*").strip()
        if line:
            return line
    return ""


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
