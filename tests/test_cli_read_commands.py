"""Read commands open the ledger read-only: a read-only ledger works, a lock or a closed pipe is one line.

The read-only filesystem is real: bubblewrap bind-mounts the ledger's folder
read-only (root, which these tests may run as, ignores file modes but not a
read-only mount).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from arl.ledger.store import StoreURL, store_failure
from tests.needs import require

ROOT = Path(__file__).resolve().parents[1]
OLD = ROOT / "tests" / "fixtures" / "ledger-main-52915f2.db"
ARL = [sys.executable, "-m", "arl.runners.cli"]
BWRAP = shutil.which("bwrap")
READS = [["status"], ["show", "ec8a7c4c#1"], ["verify"], ["sql", "SELECT label, count(*) FROM trials GROUP BY 1"],
         ["query", "leaderboard"], ["replay", "ec8a7c4c", "--verify"]]



def run(args: list[str], *, read_only: Path | None = None, **kw) -> subprocess.CompletedProcess:
    prefix = [BWRAP, "--dev-bind", "/", "/", "--ro-bind", str(read_only), str(read_only)] if read_only else []
    return subprocess.run([*prefix, *ARL, *args], capture_output=True, text=True, cwd=ROOT, timeout=120, **kw)


@pytest.mark.parametrize("with_shm", [False, True], ids=["bare file", "with its -shm and -wal"])
def test_read_commands_work_on_a_read_only_ledger(tmp_path, with_shm):
    require("sandbox", None if BWRAP else "bubblewrap is missing (apt-get install bubblewrap): it makes the "
                                          "read-only mount")
    folder = tmp_path / "ro"
    folder.mkdir()
    ledger = folder / "ledger.db"
    shutil.copy(OLD, ledger)
    if with_shm:  # a ledger copied while open, or left by a process that had it open
        conn = sqlite3.connect(ledger)
        conn.execute("PRAGMA journal_mode=WAL").fetchall()
        conn.execute("SELECT count(*) FROM stored_events").fetchall()
        keep = sqlite3.connect(ledger)  # a second connection keeps -shm and -wal in place
        keep.execute("SELECT 1").fetchall()
        assert (folder / "ledger.db-shm").exists()
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    for args in READS:
        done = run([*args, "--store", str(ledger)], read_only=folder)
        assert done.returncode == 0, (args, done.stderr)
        assert "Traceback" not in done.stderr, (args, done.stderr)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    wrote = run(["store", "drop-checkpoints", "--store", str(ledger)], read_only=folder)
    assert wrote.returncode == 2 and wrote.stderr.count("\n") == 1 and "Traceback" not in wrote.stderr
    assert "read-only" in wrote.stderr or "cannot" in wrote.stderr


def test_a_lock_held_by_another_process_is_one_line(tmp_path):
    ledger = tmp_path / "ledger.db"
    shutil.copy(OLD, ledger)
    with sqlite3.connect(ledger) as conn:  # rollback journal: a held write lock blocks readers too
        conn.execute("PRAGMA journal_mode=DELETE").fetchall()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sqlite3, sys, time\n"
        f"c = sqlite3.connect({str(ledger)!r}, isolation_level=None)\n"
        "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(120)\n")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        done = run(["status", "--store", str(ledger)])
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert "is locked by another process" in done.stderr and "retry when it is done" in done.stderr
        assert time.monotonic() - started < 60  # says so within seconds, not after the writers' 30 s
    finally:
        holder.kill()
        holder.wait()
    assert run(["status", "--store", str(ledger)]).returncode == 0


def test_a_lock_or_read_only_failure_underneath_reads_as_one_line():
    url = StoreURL.parse("sqlite:///tmp/x.db")
    locked = store_failure(sqlite3.OperationalError("database is locked"), url, "could not write to")
    assert "is locked by another process (waited 30 s)" in str(locked)
    ro = store_failure(sqlite3.OperationalError("attempt to write a readonly database"), url)
    assert "read-only here" in str(ro) and "\n" not in str(ro)


def test_output_is_safe_to_pipe(tmp_path):
    ledger = tmp_path / "ledger.db"
    shutil.copy(OLD, ledger)
    for args in (["verify"], ["sql", "SELECT * FROM range(200000)"], ["status"]):
        # The reader is gone before arl writes a byte: every write meets a closed pipe.
        r, w = os.pipe()
        os.close(r)
        done = subprocess.run([*ARL, *args, "--store", str(ledger)], stdout=w, stderr=subprocess.PIPE,
                              text=True, cwd=ROOT, timeout=120)
        os.close(w)
        assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, (args, done.stderr)
        assert done.returncode == 141, (args, done.returncode)
    shell = subprocess.run(f"{sys.executable} -m arl.runners.cli verify --store {ledger} | head -1",
                           shell=True, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert shell.stdout.startswith("ok: 42 events") and shell.stderr == ""
