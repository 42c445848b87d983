"""Errors of the forensics room; each message is one line: the problem and the fix."""

from arl.ledger import ArlError


class QueryError(ArlError):
    """A query cannot run: bad SQL, unknown query or search, unusable cache or export folder."""
