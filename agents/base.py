"""What every specialist backend has in common: it turns a lineage view into a proposal.

A backend never writes to the ledger itself. The search driver hands it a
:class:`~agents.lineage.LineageView`, gets back a :class:`Proposal`, and records
it: a proposal with a program is submitted (and scope-checked); one whose
output could not become a program is recorded with its label and reason
(``invalid_edit`` for a diff that does not apply, garbage from a model, …).
"""

from __future__ import annotations

from typing import Protocol

import msgspec

from agents.lineage import LineageView
from ledger.events import Label
from tasks.manifest import Surface, Task


class Proposal(msgspec.Struct, kw_only=True):
    agent: str
    surface: str
    hypothesis: str
    #: Expected change of the objective (signed, in the task's units), if the agent gave one.
    expected_delta: float | None = None
    #: Trial ids the edit starts from (two for a merge).
    parents: tuple[str, ...] = ()
    #: The full program after the edit; None when the edit could not be made.
    program: dict[str, bytes] | None = None
    #: Why there is no program: (label, reason), e.g. (invalid_edit, "hunk 2 does not apply").
    rejected: tuple[Label, str] | None = None
    backend: str = ""
    #: Further surfaces the edit may touch (a proposer that owns several, e.g. a baseline optimiser).
    also_surfaces: tuple[str, ...] = ()
    #: Blob digest of the recorded request/reply (LLM backends), so a replay needs no model.
    agent_call_digest: str | None = None


class Specialist(Protocol):
    """One agent owning one surface of a task."""

    name: str
    surface: Surface
    backend: str

    def propose(self, view: LineageView) -> Proposal: ...


def specialist_names(task: Task) -> list[str]:
    """One specialist per surface, named after it."""
    return [s.name for s in task.surfaces]
