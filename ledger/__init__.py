"""The ledger: arl's append-only, event-sourced record of every search.

Public surface: the event catalogue (``ledger.events``), :class:`Ledger` (the
store of events and blobs), projections and verification.
"""

from arl.ledger.errors import ArlError, BlobError, ConflictError, StoreError
from arl.ledger.events import Label, trial_id
from arl.ledger.store import Ledger, StoreURL, default_store_url

__version__ = "0.1.0"


def source_version() -> str:
    """The version to record on a search: ``__version__``, plus the git commit when arl runs
    from a checkout (``0.1.0+g954ff90``, ``.dirty`` with uncommitted changes), so a search
    names the code that drove it."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return __version__
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        # Uncommitted code makes the version ".dirty"; recorded benchmark results are not code.
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no",
                                "--", ".", ":!benchmarks/results"],
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{sha}" + (".dirty" if dirty else "")

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
    "source_version",
    "trial_id",
]
