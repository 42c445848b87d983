"""CI cannot pass by skipping: every prerequisite a test names is required by .ci/run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.needs import require

ROOT = Path(__file__).resolve().parents[1]


def test_a_required_prerequisite_fails_instead_of_skipping(monkeypatch):
    monkeypatch.delenv("ARL_REQUIRE_WIDGET", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no widget"):
        require("widget", "no widget here")
    monkeypatch.setenv("ARL_REQUIRE_WIDGET", "1")
    with pytest.raises(pytest.fail.Exception, match="no widget here .required here: ARL_REQUIRE_WIDGET"):
        require("widget", "no widget here")
    require("widget", None)  # present: nothing happens


def test_ci_requires_every_prerequisite_the_tests_name():
    named = set()
    for path in (ROOT / "tests").glob("*.py"):
        named |= {m.upper() for m in re.findall(r'\brequire\("(\w+)"', path.read_text())}
    named.discard("WIDGET")
    ci = (ROOT / ".ci" / "run").read_text()
    exported = set(re.findall(r"ARL_REQUIRE_(\w+)=1", ci))
    assert named and named <= exported, f".ci/run does not require: {sorted(named - exported)}"
    # no test may skip on its own, around require(): the skips there are the ones CI turns into failures
    lone = [f"{p.name}:{i}" for p in (ROOT / "tests").glob("test_*.py") if p.name != "test_ci.py"
            for i, line in enumerate(p.read_text().splitlines(), 1)
            if re.search(r"pytest\.skip\(|pytest\.mark\.skipif|importorskip", line)]
    assert not lone, f"skips CI cannot turn into failures (use tests.needs.require): {lone}"
