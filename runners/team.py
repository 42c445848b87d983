"""The specialists of a search: one team factory for `arl run`, `--resume`, fork and replay."""

from __future__ import annotations

from pathlib import Path

from arl.agents.agentic import AgenticSpecialist, TranscriptReplay, agentic_team
from arl.agents.base import SearchSeat, Specialist
from arl.agents.baselines import RandomSearch, TPESearch
from arl.agents.inbox import InboxTeam
from arl.agents.llm import ChatClient, LLMSpecialist, ReplayClient
from arl.agents.tools import LedgerTools, McpSeat
from arl.agents.tuner import Tuner
from arl.ledger.errors import ArlError
from arl.runners.config import SearchConfig, sandbox_problem
from arl.runners.sandbox import bwrap_path
from arl.tasks.manifest import Task

BACKENDS = ("tuner", "llm", "agentic", "mcp", "inbox", "random", "tpe")


class TeamError(ArlError):
    """The configured agents cannot be built (a missing option, an unknown backend)."""


def check_config(config: SearchConfig) -> None:
    """Refuse a configuration no team can be built from, before anything is recorded."""
    if config.agents not in BACKENDS:
        raise TeamError(f"unknown agents backend {config.agents!r}; use {', '.join(BACKENDS)}")
    if config.agents in ("llm", "agentic") and (not config.llm_url or not config.llm_model):
        extra = " of a server with tool calling" if config.agents == "agentic" else ""
        raise TeamError(f"--agents {config.agents} needs --llm-url and --llm-model{extra} "
                        "(key from ARL_LLM_API_KEY)")
    if config.agents == "inbox" and not config.inbox:
        raise TeamError("--agents inbox needs --inbox FOLDER")
    if config.agents == "inbox" and not Path(config.inbox or "").expanduser().is_dir():
        raise TeamError(f"inbox folder {config.inbox} does not exist; create it (mkdir -p) or give another --inbox")
    if config.turns < 1:
        raise TeamError(f"--turns must be at least 1, not {config.turns}")
    if config.trials < 1:
        raise TeamError(f"--trials must be at least 1, not {config.trials}")
    if config.workers < 0:
        raise TeamError(f"--workers must be 0 or more, not {config.workers}")
    problem = sandbox_problem(config, bwrap_path() is not None)
    if problem is not None:
        raise TeamError(problem)


def build_team(task: Task, config: SearchConfig, seat: SearchSeat, *,
               recorded: dict[str, list[str]] | None = None) -> list[Specialist]:
    """One specialist per surface (one optimiser for random and TPE), of the configured backend.

    ``recorded`` (replay): each specialist's recorded model calls, by name, served in
    place of the model; searches whose proposals came from outside arl cannot be
    re-driven.
    """
    check_config(config)
    if config.agents == "tuner":
        return [Tuner(task, s, seed=config.seed, lineage=config.lineage, program_of=seat.program_of)
                for s in task.surfaces]
    if config.agents in ("random", "tpe"):
        cls = RandomSearch if config.agents == "random" else TPESearch
        return [cls(task, seed=config.seed, base=seat.base_program, state=lambda: seat.projector.state)]
    if config.agents in ("mcp", "inbox") and recorded is not None:
        raise TeamError(f"proposals of a --agents {config.agents} search come from outside arl; "
                        "their files or calls are on the record, but there is nothing to re-drive")
    if config.agents == "llm":
        if recorded is not None:
            return [LLMSpecialist(s.name, s, task, ReplayClient(seat.ledger.get_blob, recorded.get(s.name, [])),
                                  seat.ledger.put_blob) for s in task.surfaces]
        client = ChatClient(config.llm_url, config.llm_model, **_reply_cap(config))
        return [LLMSpecialist(s.name, s, task, client, seat.ledger.put_blob) for s in task.surfaces]
    if config.agents == "agentic":
        if recorded is not None:
            return [
                AgenticSpecialist(
                    s.name, s, task, TranscriptReplay(seat.ledger.get_blob, recorded.get(s.name, [])),
                    seat.ledger.put_blob,
                    LedgerTools(seat.ledger, task, seat.search_id, specialist=s.name, surface=s,
                                lineage=config.lineage, backend=AgenticSpecialist.backend,
                                projector=seat.projector),
                    turns=config.turns,
                )
                for s in task.surfaces
            ]
        return agentic_team(task, seat.ledger, seat.search_id,
                            ChatClient(config.llm_url, config.llm_model, **_reply_cap(config)),
                            projector=seat.projector, lineage=config.lineage, turns=config.turns,
                            budget_tokens=config.budget_tokens)
    if config.agents == "mcp":
        return [McpSeat(s, seat.ledger) for s in task.surfaces]
    return InboxTeam.build(task, Path(config.inbox or ""), seat)


def _reply_cap(config: SearchConfig) -> dict[str, int]:
    return {"max_tokens": config.llm_max_tokens} if config.llm_max_tokens else {}
