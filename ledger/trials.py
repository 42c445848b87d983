"""Commands on a trial stream, decided from the stream itself.

Each command reads the trial's events, decides whether the step is allowed,
and appends at the next version. Two writers deciding at once race for the
same version: the store lets exactly one win and the other gets a
:class:`~ledger.errors.ConflictError` (optimistic concurrency).
"""

from __future__ import annotations

from ledger import events as ev
from ledger.errors import ConflictError
from ledger.store import Ledger, hostname

#: Events after which a trial waits for a runner.
_CLAIMABLE = (ev.TrialSubmitted, ev.LeaseExpired)


def claim(
    ledger: Ledger, trial: str, runner: str, *, lease_s: float = 60.0
) -> ev.TrialClaimed:
    """Take a submitted trial for ``runner``; raises ConflictError if it is not free."""
    events = ledger.stream(trial)
    if not events:
        raise ConflictError(f"trial {trial} does not exist in {ledger.url.display()}")
    last = events[-1]
    if not isinstance(last, _CLAIMABLE):
        raise ConflictError(
            f"trial {trial} cannot be claimed: its last event is {type(last).__name__}"
        )
    attempt = 1 + sum(isinstance(e, ev.TrialClaimed) for e in events)
    claimed = ev.TrialClaimed(
        originator_id=trial,
        originator_version=last.originator_version + 1,
        search_id=last.search_id,
        runner=runner,
        host=hostname(),
        lease_s=lease_s,
        attempt=attempt,
    )
    try:
        ledger.append(claimed)
    except ConflictError:
        raise ConflictError(
            f"trial {trial} was claimed by another runner first; pick another trial"
        ) from None
    return claimed
