"""Tamper evidence: `arl verify` names the first event or blob changed, removed or inserted."""

from __future__ import annotations

import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import psycopg

from arl.ledger import Ledger
from arl.ledger.store import StoreURL
from arl.ledger.verify import verify
from tests.factories import one_of_each

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def raw(url: str):
    """A plain connection with the append-only triggers switched off: the attacker's view."""
    u = StoreURL.parse(url)
    if u.kind == "sqlite":
        import sqlite3

        conn = sqlite3.connect(u.path)
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
            conn.execute(f"DROP TRIGGER {name}")
        yield conn, "stored_events", "rowid", "?"
        conn.commit()
        conn.close()
    else:
        with psycopg.connect(host=u.host, port=u.port, user=u.user, dbname=u.dbname,
                             autocommit=True) as conn:
            for table in ("arl_events", "arl_blobs", "arl_chain"):
                conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
            yield conn, "arl_events", "notification_id", "%s"


def _filled(url: str) -> list:
    sent = one_of_each()
    with Ledger.open(url) as ledger:
        ledger.append(*_with_real_refs(ledger, sent))
    return sent


def _with_real_refs(ledger: Ledger, sent: list) -> list:
    """The events, naming blobs that really exist (blob seq 1..5), so a clean ledger verifies."""
    import msgspec

    d = {name: ledger.put_blob(name.encode()) for name in ("edit", "call", "program", "model", "log")}
    out = []
    for e in sent:
        if type(e).__name__ == "TrialProposed" and e.edit_digest:
            e = msgspec.structs.replace(e, edit_digest=d["edit"], agent_call_digest=d["call"])
        elif type(e).__name__ == "TrialSubmitted":
            e = msgspec.structs.replace(e, program_digest=d["program"])
        elif type(e).__name__ == "RunFinished":
            e = msgspec.structs.replace(e, artifacts={"model.bin": d["model"]}, log_digest=d["log"])
        out.append(e)
    return out


def _verify(url: str):
    with Ledger.open(url, create=False) as ledger:
        return verify(ledger)


def test_clean_ledger_verifies(store_url):
    _filled(store_url)
    report = _verify(store_url)
    assert report.ok, report.problem
    assert report.events == 11 and report.blobs == 5 and len(report.head) == 64


def test_one_changed_byte_in_an_event_is_named(store_url):
    _filled(store_url)
    with raw(store_url) as (conn, table, nid, ph):
        state = bytes(conn.execute(f"SELECT state FROM {table} WHERE {nid} = 4").fetchone()[0])
        i = state.index(b'"w1"')
        changed = state[: i + 1] + b"W" + state[i + 2 :]
        conn.execute(f"UPDATE {table} SET state = {ph} WHERE {nid} = 4", (changed,))
    report = _verify(store_url)
    assert not report.ok
    assert report.problem.startswith("event #4 (TrialClaimed") and "was changed" in report.problem


def test_a_deleted_event_is_named(store_url):
    _filled(store_url)
    with raw(store_url) as (conn, table, nid, ph):
        conn.execute(f"DELETE FROM {table} WHERE {nid} = 6")
    report = _verify(store_url)
    assert report.problem == "event #6 was removed: its chain link exists but the event does not"


def test_an_inserted_event_is_named(store_url):
    _filled(store_url)
    with raw(store_url) as (conn, table, nid, ph):
        row = conn.execute(
            f"SELECT originator_id, topic, state FROM {table} WHERE {nid} = 2"
        ).fetchone()
        conn.execute(
            f"INSERT INTO {table} (originator_id, originator_version, topic, state) "
            f"VALUES ({ph}, 99, {ph}, {ph})",
            (row[0], row[1], row[2]),
        )
    report = _verify(store_url)
    assert "event #12 (TrialProposed" in report.problem and "inserted outside arl" in report.problem


def test_a_changed_blob_is_named(store_url):
    _filled(store_url)
    with raw(store_url) as (conn, table, nid, ph):
        conn.execute(f"UPDATE arl_blobs SET data = {ph} WHERE seq = 3", (b"PROGRAM",))
    report = _verify(store_url)
    assert "(#3) was changed" in report.problem


def test_a_removed_blob_is_named(store_url):
    _filled(store_url)
    with raw(store_url) as (conn, table, nid, ph):
        conn.execute("DELETE FROM arl_blobs WHERE seq = 5")  # the last one: no chain after it
    report = _verify(store_url)
    assert "names blob" in report.problem and "not in the store" in report.problem


def test_an_inserted_blob_is_named(store_url):
    import hashlib

    _filled(store_url)
    with raw(store_url) as (conn, table, nid, ph):
        data = b"smuggled"
        conn.execute(
            f"INSERT INTO arl_blobs (digest, size, data, chain) VALUES ({ph}, {ph}, {ph}, {ph})",
            (hashlib.sha256(data).hexdigest(), len(data), data, b"\x00" * 32),
        )
    report = _verify(store_url)
    assert "inserted outside arl" in report.problem and "(#6)" in report.problem


def test_truncated_tail_is_caught_by_the_expected_head(sqlite_url):
    _filled(sqlite_url)
    head = _verify(sqlite_url).head
    with raw(sqlite_url) as (conn, table, nid, ph):
        conn.execute(f"DELETE FROM {table} WHERE {nid} = 11")
        conn.execute("DELETE FROM arl_chain WHERE notification_id = 11")
    assert _verify(sqlite_url).ok  # a consistent truncation needs an anchor …
    with Ledger.open(sqlite_url) as ledger:
        report = verify(ledger, expect_head=head)
    assert "not the expected" in report.problem  # … which --expect-head provides


def test_cli_exit_codes_and_messages(sqlite_url):
    _filled(sqlite_url)
    arl = [sys.executable, "-m", "arl.runners.cli"]
    ok = subprocess.run([*arl, "verify", "--store", sqlite_url], capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0 and ok.stdout.startswith("ok: 11 events and 5 blobs"), ok.stderr
    with raw(sqlite_url) as (conn, table, nid, ph):
        conn.execute(f"DELETE FROM {table} WHERE {nid} = 3")
    bad = subprocess.run([*arl, "verify", "--store", sqlite_url], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 1
    assert bad.stderr.strip() == "TAMPERED: event #3 was removed: its chain link exists but the event does not"
    missing = subprocess.run([*arl, "verify", "--store", sqlite_url + ".nope"], capture_output=True, text=True, cwd=ROOT)
    assert missing.returncode == 2 and missing.stderr.startswith("arl: error: no arl ledger at")
    assert "Traceback" not in missing.stderr
