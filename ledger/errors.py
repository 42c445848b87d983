"""Errors a user can cause or fix. ``str(error)`` is one line: the problem and the fix."""


class ArlError(Exception):
    """Base of every error arl reports to a person instead of a traceback."""


class StoreError(ArlError):
    """The store cannot be opened or used: bad URL, unreachable, not a ledger, too new."""


class ConflictError(ArlError):
    """Another writer appended to the same stream first (optimistic concurrency)."""


class BlobError(ArlError):
    """A blob is missing or its bytes no longer match its digest."""


class LedgerWarning(UserWarning):
    """Something in the store was not as recorded and was worked around (e.g. a checkpoint rebuilt)."""
