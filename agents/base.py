"""What every specialist backend has in common: it turns a lineage view into a proposal.

A backend never writes a trial itself. The search driver hands it a
:class:`~arl.agents.lineage.LineageView`, gets back a :class:`Proposal`, and records
it: a proposal with a program is submitted (and scope-checked); one whose
output could not become a program is recorded with its label and reason
(``invalid_edit`` for a diff that does not apply, garbage from a model, …).
What a backend may read of its search besides the view is a :class:`SearchSeat`,
which the driver provides — backends never depend on the driver itself.
"""

from __future__ import annotations

from typing import Protocol

import msgspec

from arl.agents.lineage import LineageView
from arl.ledger.events import Label
from arl.ledger.programs import Program
from arl.ledger.projections import Projector
from arl.ledger.store import Ledger
from arl.tasks.manifest import Surface


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
    """One agent owning one surface of a task.

    A backend may also define ``recorded(proposal, trial_id, seq)``: the driver calls it as
    soon as the proposal is on the record (the inbox marks the proposal's file then).
    """

    name: str
    surface: Surface
    backend: str

    def propose(self, view: LineageView) -> Proposal: ...


class SearchSeat(Protocol):
    """What a specialist backend may read of the search it proposes into (the driver is one)."""

    ledger: Ledger
    search_id: str
    #: The search's projector: caught up by whoever reads through it.
    projector: Projector
    #: The program the search started from.
    base_program: Program

    @property
    def lineage(self) -> bool:
        """False in the control arm: agents see only the current best."""
        ...

    def program_of(self, trial_id: str) -> Program:
        """The program of one of the search's trials."""
        ...
