"""Prerequisites of tests: skipped where missing, failed where CI requires them."""

from __future__ import annotations

import os

import pytest


def require(what: str, problem: str | None) -> None:
    """A test's prerequisite: nothing when ``problem`` is None; else skip — or fail where CI
    requires it (``ARL_REQUIRE_<WHAT>=1``, set by .ci/run for everything it installs), so a test
    CI is there to run never passes by skipping."""
    if problem is None:
        return
    if os.environ.get(f"ARL_REQUIRE_{what.upper()}"):
        pytest.fail(f"{problem} (required here: ARL_REQUIRE_{what.upper()} is set)")
    pytest.skip(problem)
