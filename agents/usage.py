"""Token accounting: what a search's model calls have cost, read back from the ledger.

Every model-backed proposal points to its recorded call blob (``llm``: one
call, ``agentic``: a whole session), and each blob carries ``usage`` at the
top. Summing those is the search's spend — the same on a resumed search as on
the live one, with no counter that could drift from the record.
"""

from __future__ import annotations

import msgspec

from arl.ledger import events as ev
from arl.ledger.errors import ArlError
from arl.ledger.store import Ledger


class _Usage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None


class _Call(msgspec.Struct):
    usage: _Usage | None = None


_decoder = msgspec.json.Decoder(_Call)


def blob_tokens(data: bytes) -> int:
    """Tokens recorded in one agent-call blob (0 for blobs without usage, e.g. inbox files)."""
    try:
        usage = _decoder.decode(data).usage
    except msgspec.DecodeError:
        return 0
    if usage is None:
        return 0
    if usage.total_tokens is not None:
        return usage.total_tokens
    return (usage.prompt_tokens or 0) + (usage.completion_tokens or 0)


class TokenMeter:
    """Tokens spent by one search's recorded agent calls; reads only what is new each time."""

    def __init__(self, ledger: Ledger, search_id: str) -> None:
        self.ledger = ledger
        self.search_id = search_id
        self._position = 0
        self._spent = 0

    def spent(self) -> int:
        while batch := self.ledger.read(self._position, 10_000):
            for _, e in batch:
                if isinstance(e, ev.TrialProposed) and e.search_id == self.search_id and e.agent_call_digest:
                    try:
                        self._spent += blob_tokens(self.ledger.get_blob(e.agent_call_digest))
                    except ArlError:
                        pass  # a missing blob is `arl verify`'s to report
            self._position = batch[-1][0]
        return self._spent
