"""What shapes a search: the configuration recorded in ``SearchStarted.config``."""

from __future__ import annotations

from typing import Any

import msgspec

from arl.ledger import events as ev
from arl.ledger.errors import ArlError


#: The most seeds ``--baseline-seeds`` measures the base program on.
MAX_BASELINE_SEEDS = 100


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
    #: "bwrap": model-written code runs only under a working sandbox (the default);
    #: "none": the user allowed it without one (``--sandbox none``), on the record.
    sandbox: str = "bwrap"
    #: Measure the starting program on this many seeds first; their spread becomes the
    #: noise floor the search judges by (None: one measurement, the manifest's floor).
    baseline_seeds: int | None = None

    def measured_seeds(self, task_seeds: list[int], confirm_seeds: list[int]) -> list[int] | None:
        """The seeds of the baseline: the task's, its confirmation seeds, then the next unused."""
        if self.baseline_seeds is None:
            return None
        if self.baseline_seeds < 2:
            raise ArlError(f"--baseline-seeds {self.baseline_seeds}: a spread needs at least 2 seeds; "
                           "give 2 or more, or leave it out to judge by the manifest's noise floor")
        if self.baseline_seeds > MAX_BASELINE_SEEDS:
            raise ArlError(f"--baseline-seeds {self.baseline_seeds}: at most {MAX_BASELINE_SEEDS} (each seed is "
                           "a whole run of the base program); 5 to 20 measure a spread well")
        seeds = list(dict.fromkeys([*task_seeds, *confirm_seeds]))
        extra = (n for n in range(10_000) if n not in seeds)
        while len(seeds) < self.baseline_seeds:
            seeds.append(next(extra))
        return seeds[: self.baseline_seeds]

    @classmethod
    def of(cls, recorded: ev.SearchStarted | dict[str, Any]) -> SearchConfig:
        """The configuration a search recorded (a SearchStarted, or ``search_config``'s dict with
        its resumes applied); keys arl no longer knows are left out."""
        config = recorded.config if isinstance(recorded, ev.SearchStarted) else recorded
        return msgspec.convert({k: v for k, v in config.items() if k in cls.__struct_fields__}, cls)

    def changed_on_resume(self, given: dict[str, Any]) -> dict[str, list[Any]]:
        """What a resume's options change, as key → [old, new]; raises for a key that cannot change.

        A resumed search goes on as configured; its trial budget, in-process workers and token
        budget may change (the change is recorded), nothing else: that would be another search.
        """
        changes: dict[str, list[Any]] = {}
        for key, value in given.items():
            old = getattr(self, key)
            if value == old:
                continue
            if key not in RESUMABLE:
                flag = "--" + key.replace("_", "-")
                raise ArlError(f"{flag} cannot change when a search is resumed (it ran with {old!r}); "
                               f"--resume may change only {', '.join('--' + k.replace('_', '-') for k in RESUMABLE)}"
                               " — start a new search (or fork a trial) for the rest")
            changes[key] = [old, value]
        return changes


#: Backends whose edits a model writes: not generated from the task's declared knobs and techniques.
MODEL_WRITTEN = frozenset({"llm", "agentic", "mcp", "inbox"})

INSTALL_SANDBOX = ("install bubblewrap (apt-get install bubblewrap) and allow unprivileged user "
                   "namespaces (sysctl kernel.unprivileged_userns_clone=1)")


def sandbox_problem(config: SearchConfig, sandboxed: bool) -> str | None:
    """Why a search of ``config`` may not run its recipes here (None: it may). Model-written code
    needs a working sandbox unless the user said ``--sandbox none``."""
    if config.sandbox not in ("bwrap", "none"):
        return f"unknown --sandbox {config.sandbox!r}; use bwrap (the default) or none"
    if sandboxed or config.sandbox == "none" or config.agents not in MODEL_WRITTEN:
        return None
    return (f"--agents {config.agents} runs model-written code, and there is no working sandbox here: "
            f"{INSTALL_SANDBOX}, or pass --sandbox none to run it unsandboxed (recorded in the search)")


#: What ``arl run --resume`` may change of a search's configuration.
RESUMABLE = ("trials", "workers", "budget_tokens")
