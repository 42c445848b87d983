"""A ledger written before arl became one package still opens, projects, verifies and exports.

``tests/fixtures/ledger-main-52915f2.db`` was written by main at 52915f2, when events were
stored under topics of the module ``ledger.events`` (see ``fixtures/make_old_ledger.py``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from arl.ledger import Ledger, events as ev
from arl.ledger.projections import rebuild
from arl.ledger.verify import verify
from arl.queries import connect, export, run_sql

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "ledger-main-52915f2.db"
SEARCH = "ec8a7c4c-74c9-48a4-a383-abb8df9b3415"
HEAD = "2873b0171430125016c80d4d558505c067f7eb099a332b3349d33630bb215a44"


@pytest.fixture
def old(tmp_path) -> str:
    copy = tmp_path / "old.db"
    shutil.copy(FIXTURE, copy)
    return f"sqlite:///{copy}"


def test_an_old_ledger_opens_and_projects(old):
    with Ledger.open(old, create=False) as ledger:
        events = [e for _, e in ledger.iter_events()]
        state = rebuild(ledger)
        topics = {row[3] for row in ledger.read_raw(0, 100)}
    then = set(ev.EVENT_TYPES) - {ev.SearchResumed}  # the catalogue at 52915f2
    assert len(events) == 42 and {type(e) for e in events} == then
    assert topics == {f"ledger.events:{cls.__name__}" for cls in then}
    rows = state.trials_of(SEARCH)
    assert Counter(r.label.value for r in rows if r.label) == {
        "discard": 2, "baseline": 1, "gate_miss": 1, "keep": 1, "invalid_edit": 1, "illegal_edit": 1}
    assert [state.trials[t].seq for t in state.queue] == [7]  # the trial whose runner was lost
    assert state.searches[SEARCH].best_score == pytest.approx(0.286298, abs=1e-6)


def test_an_old_ledger_verifies_and_takes_new_events_under_the_same_topics(old):
    with Ledger.open(old, create=False) as ledger:
        report = verify(ledger)
        assert report.ok and report.head == HEAD, report
        ledger.append(ev.SearchStopped(originator_id=SEARCH, originator_version=ledger.version(SEARCH) + 1,
                                       reason="checked by a newer arl"))
        topic = ledger.read_raw(ledger.head() - 1, 1)[0][3]
        again = verify(ledger)
    assert topic == "ledger.events:SearchStopped" and again.ok


def test_an_old_ledger_loads_into_duckdb_and_exports(old, tmp_path):
    with Ledger.open(old, create=False) as ledger:
        con = connect(ledger)
        labels = dict(run_sql(con, "SELECT label, count(*) FROM trials GROUP BY 1").rows)
        export(con, "ndjson", tmp_path / "nd")
    assert labels["discard"] == 2 and labels["keep"] == 1
    lines = (tmp_path / "nd" / "events.ndjson").read_text().splitlines()
    assert len(lines) == 42 and json.loads(lines[0])["type"] == "SearchStarted"


def test_the_cli_reads_an_old_ledger(old, tmp_path):
    arl = [sys.executable, "-m", "arl.runners.cli"]
    status = subprocess.run([*arl, "status", "--store", old], capture_output=True, text=True, timeout=120)
    assert status.returncode == 0 and "search old-main-tiny" in status.stdout, status.stderr
    verified = subprocess.run([*arl, "verify", "--store", old], capture_output=True, text=True, timeout=120)
    assert verified.returncode == 0 and HEAD in verified.stdout, verified.stderr
    prov = subprocess.run([*arl, "export", "prov", str(tmp_path / "prov"), "--store", old],
                          capture_output=True, text=True, timeout=120)
    assert prov.returncode == 0, prov.stderr
