"""Tamper evidence that survives the owner: anchored heads, checked checkpoints, two PostgreSQL roles.

The attacker here owns the store: with the SQLite file, or as the owner of the
PostgreSQL tables, they switch the triggers off, relabel a trial and recompute
every chain link after it, so the chain alone verifies. A head noted earlier
outside the store catches it.
"""

from __future__ import annotations

import subprocess
import sys

import psycopg
import pytest

from arl.ledger import Ledger
from arl.ledger import events as ev
from arl.ledger.anchors import Anchor, AnchorError, parse_expected, read_anchors
from arl.ledger.errors import LedgerWarning
from arl.ledger.projections import Projector, State
from arl.ledger.store import GENESIS, StoreURL, record_digest
from arl.ledger.verify import verify
from tests.conftest import PG_HOST, PG_PORT, _pg_admin, create_pg_database, drop_pg_database
from tests.factories import one_of_each
from tests.test_ledger_verify import ROOT, _filled, _with_real_refs, raw

ARL = [sys.executable, "-m", "arl.runners.cli"]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*ARL, *args], capture_output=True, text=True, cwd=ROOT, timeout=120)


def head_at(url: str, position: int) -> str:
    with Ledger.open(url, read_only=True) as ledger:
        return ledger.chain_link(position).hex()


def relabel_and_recompute(url: str) -> int:
    """The owner's rewrite: a TrialLabeled event says something else, every later link recomputed."""
    with raw(url) as (conn, table, nid, ph):
        rows = conn.execute(f"SELECT {nid}, originator_id, originator_version, topic, state FROM {table} "
                            f"ORDER BY {nid}").fetchall()
        target = next(r[0] for r in rows if r[3].endswith(":TrialLabeled"))
        prev = GENESIS
        for n, oid, version, topic, state in rows:
            state = bytes(state)
            if n == target:
                state = state.replace(b'"label":"', b'"label":"keep","was":"')
                conn.execute(f"UPDATE {table} SET state = {ph} WHERE {nid} = {ph}", (state, n))
            prev = record_digest(prev, n, oid, version, topic, state)
            conn.execute(f"UPDATE arl_chain SET digest = {ph} WHERE notification_id = {ph}", (prev, n))
    return target


def test_a_rewrite_that_recomputes_the_chain_is_caught_by_an_earlier_head(store_url):
    _filled(store_url)  # 11 events
    yesterday = head_at(store_url, 9)  # noted at position 9, before the log grew
    with Ledger.open(store_url) as ledger:  # the live ledger grows
        ledger.append(*_with_real_refs(ledger, one_of_each()))
    assert verify_ok(store_url, f"{yesterday}@9")  # a live ledger checks against yesterday's head
    target = relabel_and_recompute(store_url)
    assert target <= 9
    assert verify_ok(store_url)  # the chain alone cannot tell: it was recomputed
    with Ledger.open(store_url, read_only=True) as ledger:
        report = verify(ledger, expect_head=f"{yesterday}@9")
    assert not report.ok and "the chain at #9" in report.problem and "chain recomputed" in report.problem


def verify_ok(url: str, *expect: str) -> bool:
    with Ledger.open(url, read_only=True) as ledger:
        report = verify(ledger, expect_head=list(expect))
    assert report.ok, report.problem
    return report.ok


def test_removal_up_to_past_an_anchor_is_caught(sqlite_url):
    _filled(sqlite_url)
    noted = head_at(sqlite_url, 11)
    with raw(sqlite_url) as (conn, table, nid, ph):
        conn.execute(f"DELETE FROM {table} WHERE {nid} >= 9")
        conn.execute("DELETE FROM arl_chain WHERE notification_id >= 9")
    with Ledger.open(sqlite_url, read_only=True) as ledger:
        report = verify(ledger, anchors=[Anchor(position=11, head=noted, ledger=ledger.ledger_id())])
    assert "the log ends at #8, before the anchored #11" in report.problem


def test_arl_anchor_publishes_a_line_that_verify_reads_back(sqlite_url, tmp_path):
    _filled(sqlite_url)
    file = tmp_path / "anchors.txt"
    made = cli("anchor", "--store", sqlite_url, "--to", str(file))
    assert made.returncode == 0, made.stderr
    line = made.stdout.strip()
    assert line.startswith("arl-anchor ledger=") and f"@{11} at=" in line and file.read_text().strip() == line
    saved = tmp_path / "chat.log"  # any text holding the line works, e.g. where it was published
    saved.write_text(f"12:01 <ops> today's head:\n12:01 <ops> {line}\n12:02 <dev> thanks\n")
    assert [a.position for a in read_anchors(saved)] == [11]
    ok = cli("verify", "--store", sqlite_url, "--anchors", str(saved))
    assert ok.returncode == 0 and "1 anchored head(s) match" in ok.stdout, ok.stderr
    assert ok.stdout.strip().endswith(f"@{11}")

    relabel_and_recompute(sqlite_url)
    caught = cli("verify", "--store", sqlite_url, "--anchors", str(saved))
    assert caught.returncode == 1 and caught.stderr.startswith("TAMPERED: the chain at #11")
    refused = cli("anchor", "--store", sqlite_url, "--to", str(file))  # no anchoring a tampered ledger
    assert refused.returncode == 1 and "nothing anchored" in refused.stderr
    assert file.read_text().strip() == line


def test_an_anchor_of_another_ledger_and_bad_heads_are_named(sqlite_url, tmp_path):
    _filled(sqlite_url)
    other = f"sqlite:///{tmp_path / 'other.db'}"
    _filled(other)
    file = tmp_path / "other.anchors"
    assert cli("anchor", "--store", other, "--to", str(file)).returncode == 0
    wrong = cli("verify", "--store", sqlite_url, "--anchors", str(file))
    assert wrong.returncode == 1 and "was noted for ledger" in wrong.stderr
    bad = cli("verify", "--store", sqlite_url, "--expect-head", "abc@3")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "64-hex chain head" in bad.stderr
    with pytest.raises(AnchorError):
        parse_expected("zz")
    assert parse_expected("A" * 64 + "@7") == ("a" * 64, 7)
    empty = tmp_path / "empty.txt"
    empty.write_text("nothing here\n")
    none = cli("verify", "--store", sqlite_url, "--anchors", str(empty))
    assert none.returncode == 2 and "holds no anchor line" in none.stderr


# --- checkpoints ---------------------------------------------------------------------------


def _labelled(url: str) -> tuple[str, str]:
    """A ledger whose trial is labelled size_violation, and a live checkpoint of its state."""
    sent = one_of_each()
    with Ledger.open(url) as ledger:
        ledger.append(*_with_real_refs(ledger, [e for e in sent if not isinstance(e, ev.EditRejected)]))
        projector = Projector(ledger, name="cli")
        projector.catch_up()
        projector.checkpoint()
    trial = next(e.originator_id for e in sent if isinstance(e, ev.TrialLabeled))
    return trial, projector.name


def forge(url: str, name: str, trial: str, *, keep_link: bool) -> None:
    """What the issue's attacker did: a checkpoint row saying the trial was a keep."""
    import hashlib

    with Ledger.open(url) as ledger:
        position, _, data = ledger.load_checkpoint(name)
        state = State.from_bytes(data)
        state.trials[trial].label = ev.Label.KEEP
        if not keep_link:
            state.link = "00" * 32
        forged = state.to_bytes()
        with raw(url) as (conn, table, nid, ph):
            conn.execute(f"UPDATE arl_projections SET state = {ph}, digest = {ph} WHERE name = {ph}",
                         (forged, hashlib.sha256(forged).hexdigest(), name))


def test_a_forged_checkpoint_is_caught_by_verify(store_url):
    trial, name = _labelled(store_url)
    assert verify_ok(store_url)
    forge(store_url, name, trial, keep_link=True)
    with Ledger.open(store_url, read_only=True) as ledger:
        report = verify(ledger)
    assert not report.ok and f"checkpoint {name!r}" in report.problem
    assert "(its trials differ from a rebuild)" in report.problem
    with Ledger.open(store_url) as ledger:
        assert ledger.drop_checkpoints() == 1
    assert verify_ok(store_url)


def test_a_checkpoint_not_of_this_log_is_rebuilt_with_a_warning(sqlite_url):
    trial, name = _labelled(sqlite_url)
    forge(sqlite_url, name, trial, keep_link=False)
    with Ledger.open(sqlite_url) as ledger:
        with pytest.warns(LedgerWarning, match="not computed from this log"):
            state = Projector(ledger, name="cli").catch_up()
    assert state.trials[trial].label is ev.Label.SIZE_VIOLATION  # rebuilt from the log, not the forgery
    status = cli("status", "--store", sqlite_url)
    assert "arl: warning: projection checkpoint" in status.stderr and "Traceback" not in status.stderr


def test_checkpoints_carry_the_link_of_their_position(sqlite_url):
    _labelled(sqlite_url)
    with Ledger.open(sqlite_url, read_only=True) as ledger:
        [(name, position)] = ledger.checkpoint_positions()
        state = State.from_bytes(ledger.load_checkpoint(name)[2])
        assert state.link == ledger.chain_link(position).hex() and position == ledger.head()
        report = verify(ledger)
    assert report.ok and report.checkpoints == 1


# --- PostgreSQL: an owner that migrates, a writer that may only append -------------------------


@pytest.fixture
def two_roles():
    """A database owned by a non-superuser owner role, and a writer role: the README's setup."""
    name = create_pg_database()
    owner, writer = f"{name}_owner", f"{name}_writer"
    with _pg_admin() as admin:
        admin.execute(f'CREATE ROLE "{owner}" LOGIN')
        admin.execute(f'CREATE ROLE "{writer}" LOGIN')
        admin.execute(f'ALTER DATABASE "{name}" OWNER TO "{owner}"')
    with psycopg.connect(host=PG_HOST, port=PG_PORT, user="postgres", dbname=name, autocommit=True) as c:
        c.execute(f'ALTER SCHEMA public OWNER TO "{owner}"')
    try:
        yield (f"postgresql://{owner}@{PG_HOST}:{PG_PORT}/{name}",
               f"postgresql://{writer}@{PG_HOST}:{PG_PORT}/{name}", writer)
    finally:
        drop_pg_database(name)
        with _pg_admin() as admin:
            admin.execute(f'DROP ROLE IF EXISTS "{owner}"')
            admin.execute(f'DROP ROLE IF EXISTS "{writer}"')


def test_a_writer_role_can_append_but_not_rewrite(two_roles):
    owner_url, writer_url, writer = two_roles
    migrated = cli("store", "migrate", "--store", owner_url)
    assert migrated.returncode == 0, migrated.stderr
    refused = cli("store", "grant", "nobody_here", "--store", owner_url)
    assert refused.returncode == 2 and "no role 'nobody_here'" in refused.stderr
    granted = cli("store", "grant", writer, "--store", owner_url)
    assert granted.returncode == 0 and "GRANT SELECT, INSERT ON" in granted.stdout, granted.stderr

    sent = one_of_each()
    with Ledger.open(writer_url) as ledger:  # workers and drivers: append, read, checkpoint, renew leases
        ledger.append(*_with_real_refs(ledger, sent)[:6])
        digest = ledger.put_blob(b"a program")
        ledger.renew_lease(sent[1].originator_id, "w1", 1e10)
        ledger.renew_lease(sent[1].originator_id, "w1", 2e10)
        projector = Projector(ledger, name="writer")
        projector.catch_up()
        projector.checkpoint()
        assert ledger.get_blob(digest) == b"a program"
    assert verify_ok(writer_url)

    u = StoreURL.parse(writer_url)
    attempts = {
        "update": "UPDATE arl_events SET state = state WHERE notification_id = 1",
        "delete": "DELETE FROM arl_events WHERE notification_id = 6",
        "truncate": "TRUNCATE arl_events",
        "disable triggers": "ALTER TABLE arl_events DISABLE TRIGGER USER",
        "rewrite the chain": "UPDATE arl_chain SET digest = digest",
        "drop a blob": "DELETE FROM arl_blobs",
        "truncate blobs": "TRUNCATE arl_blobs CASCADE",
        "replace the trigger function": "CREATE OR REPLACE FUNCTION arl_refuse_change() RETURNS trigger "
                                        "LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$",
        "drop the trigger": "DROP TRIGGER arl_events_append_only ON arl_events",
        "rewrite meta": "UPDATE arl_meta SET value = 'x'",
    }
    with psycopg.connect(host=u.host, port=u.port, user=u.user, dbname=u.dbname, autocommit=True) as conn:
        for what, statement in attempts.items():
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied|must be owner"):
                conn.execute(statement)
    with Ledger.open(writer_url, read_only=True) as ledger:
        assert ledger.head() == 6
    assert verify_ok(writer_url)


def test_a_writer_on_an_unmigrated_ledger_is_told_to_ask_the_owner(two_roles):
    owner_url, writer_url, writer = two_roles
    with Ledger.open(owner_url) as ledger:
        ledger.append(*one_of_each()[:2])
    assert cli("store", "grant", writer, "--store", owner_url).returncode == 0
    # As an older arl left it: tables there, this version's DDL not recorded.
    with psycopg.connect(owner_url, autocommit=True) as c:
        c.execute("ALTER TABLE arl_meta DISABLE TRIGGER USER")
        c.execute("DELETE FROM arl_meta WHERE key LIKE 'ddl/%'")
        c.execute("ALTER TABLE arl_meta ENABLE TRIGGER USER")
    done = cli("status", "--store", writer_url)  # read-only: no DDL needed
    assert "Traceback" not in done.stderr
    worker = cli("worker", "--store", writer_url, "--exit-when-idle")
    assert worker.returncode == 2 and "run `arl store migrate" in worker.stderr
    assert worker.stderr.count("\n") == 1
    assert cli("store", "migrate", "--store", writer_url).returncode == 2  # the writer may not migrate
    assert cli("store", "migrate", "--store", owner_url).returncode == 0
    assert cli("worker", "--store", writer_url, "--exit-when-idle").returncode == 0


def test_migrate_as_the_owner_of_a_sqlite_ledger(sqlite_url):
    done = cli("store", "migrate", "--store", sqlite_url)
    assert done.returncode == 0 and "in place" in done.stdout
    grant = cli("store", "grant", "someone", "--store", sqlite_url)
    assert grant.returncode == 2 and "PostgreSQL only" in grant.stderr
