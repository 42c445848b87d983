"""Which search a reference names: the one rule every command, query, tool and replay uses.

A reference is a search id, a unique id prefix, or a name. An exact id wins;
then a name (searches may share one — a name picks the latest of them); then a
prefix, which must be unique. No reference means the latest search.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from arl.ledger import events as ev
from arl.ledger.errors import ArlError
from arl.ledger.store import Ledger


class UnknownSearch(ArlError):
    """The reference names no search, or more than one."""


class SearchRef(NamedTuple):
    """One candidate: a search's id and name, in the order the searches started."""

    search_id: str
    name: str


def pick_search(searches: Sequence[SearchRef], ref: str | None, *, where: str) -> str:
    """The search ``ref`` names among ``searches`` (oldest first); ``where`` names the ledger."""
    if not searches:
        raise UnknownSearch(f"no search in {where} yet; start one with `arl run TASK`")
    if ref is None or not ref.strip():
        return searches[-1].search_id
    ref = ref.strip()
    for s in searches:
        if s.search_id == ref:
            return s.search_id
    named = [s for s in searches if s.name == ref]
    if named:
        return named[-1].search_id
    prefixed = [s for s in searches if s.search_id.startswith(ref.lower())]
    if len(prefixed) == 1:
        return prefixed[0].search_id
    if not prefixed:
        recent = ", ".join(list(dict.fromkeys(s.name for s in reversed(searches)))[:5])
        raise UnknownSearch(f"no search matches {ref!r} in {where} (recent: {recent}); "
                            "pass a search id, id prefix or name")
    raise UnknownSearch(f"{len(prefixed)} searches start with {ref!r}; give more of the id, or the full name")


def searches_of(ledger: Ledger) -> list[SearchRef]:
    """Every search of the ledger, oldest first."""
    found: list[SearchRef] = []
    after = 0
    while batch := ledger.read(after, 20_000):
        found += [SearchRef(e.originator_id, e.name) for _, e in batch if isinstance(e, ev.SearchStarted)]
        after = batch[-1][0]
    return found


def find_search(ledger: Ledger, ref: str | None) -> str:
    """The id of the search ``ref`` names in ``ledger`` (the latest when None)."""
    return pick_search(searches_of(ledger), ref, where=ledger.url.display())


def search_config(ledger: Ledger, search_id: str) -> dict:
    """A search's configuration as it stands: what SearchStarted recorded, with what each
    resume changed (``SearchResumed.changes``: key → [old, new]) applied in order."""
    events = ledger.stream(search_id)
    if not events or not isinstance(events[0], ev.SearchStarted):
        raise UnknownSearch(f"{search_id} is not a search in {ledger.url.display()}")
    config = dict(events[0].config)
    for e in events[1:]:
        if isinstance(e, ev.SearchResumed):
            config.update({key: new for key, (_old, new) in e.changes.items()})
    return config
