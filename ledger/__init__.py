"""The ledger: arl's append-only, event-sourced record of every search.

Public surface: the event catalogue (``ledger.events``), :class:`Ledger` (the
store of events and blobs), projections and verification.
"""

from ledger.errors import ArlError, BlobError, ConflictError, StoreError
from ledger.events import Label, trial_id
from ledger.store import Ledger, StoreURL, default_store_url

__version__ = "0.1.0"

__all__ = [
    "ArlError",
    "BlobError",
    "ConflictError",
    "Label",
    "Ledger",
    "StoreError",
    "StoreURL",
    "__version__",
    "default_store_url",
    "trial_id",
]
