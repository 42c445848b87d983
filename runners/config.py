"""What shapes a search: the configuration recorded in ``SearchStarted.config``."""

from __future__ import annotations

import msgspec

from arl.ledger import events as ev


class SearchConfig(msgspec.Struct, kw_only=True):
    """Everything that shapes a search; recorded in SearchStarted.config."""

    trials: int = 30
    workers: int = 1
    agents: str = "tuner"
    lineage: bool = True
    seed: int = 0
    llm_url: str | None = None
    llm_model: str | None = None
    #: Cap on each model reply (tokens); the client's default when None.
    llm_max_tokens: int | None = None
    inbox: str | None = None
    #: Adapter tasks: the user's checkout and data folder (recorded, so workers find them).
    recipe_from: str | None = None
    data: str | None = None
    #: Stop cleanly once the search's recorded model usage reaches this many tokens (None: no limit).
    budget_tokens: int | None = None
    #: Turn limit of one agentic session.
    turns: int = 8

    @classmethod
    def of(cls, started: ev.SearchStarted) -> SearchConfig:
        """The configuration a search recorded (keys arl no longer knows are left out)."""
        return msgspec.convert({k: v for k, v in started.config.items() if k in cls.__struct_fields__}, cls)
