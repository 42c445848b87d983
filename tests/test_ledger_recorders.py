"""eventsourcing's own recorder test cases, run against arl's chained recorders.

arl adds a hash-chain row inside each insert transaction; these prove the
library's contract (ordering, conflicts, concurrency, non-interleaving ids)
still holds with that addition, on a real SQLite file and real PostgreSQL.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path

from eventsourcing.tests.persistence import (
    ApplicationRecorderTestCase,
    NonInterleavingNotificationIDsBaseCase,
)

from arl.ledger import Ledger
from arl.ledger.verify import verify
from tests.conftest import create_pg_database, drop_pg_database, pg_url_for


class _TextIds:
    """arl stores stream ids as text (ORIGINATOR_ID_TYPE=text)."""

    def new_originator_id(self) -> str:
        return str(uuid.uuid4())


class _SQLiteLedger(_TextIds):
    def setUp(self) -> None:
        self._dir = tempfile.mkdtemp()
        self._ledgers: list[Ledger] = []

    def tearDown(self) -> None:
        for ledger in self._ledgers:
            # Every insert the library's tests made must also verify as a clean chain.
            report = verify(ledger)
            assert report.ok, report.problem
            ledger.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def create_recorder(self):
        ledger = Ledger.open(f"sqlite:///{Path(self._dir) / f'l{len(self._ledgers)}.db'}")
        self._ledgers.append(ledger)
        return ledger.recorder


class _PostgresLedger(_TextIds):
    def setUp(self) -> None:
        self._db = create_pg_database()
        self._ledgers: list[Ledger] = []

    def tearDown(self) -> None:
        for ledger in self._ledgers:
            report = verify(ledger)
            assert report.ok, report.problem
            ledger.close()
        drop_pg_database(self._db)

    def create_recorder(self):
        ledger = Ledger.open(pg_url_for(self._db))
        self._ledgers.append(ledger)
        return ledger.recorder


class TestChainedSQLiteRecorder(_SQLiteLedger, ApplicationRecorderTestCase):
    pass


class TestChainedSQLiteNonInterleaving(_SQLiteLedger, NonInterleavingNotificationIDsBaseCase):
    pass


class TestChainedPostgresRecorder(_PostgresLedger, ApplicationRecorderTestCase):
    pass


class TestChainedPostgresNonInterleaving(_PostgresLedger, NonInterleavingNotificationIDsBaseCase):
    pass


del ApplicationRecorderTestCase, NonInterleavingNotificationIDsBaseCase  # not collected bare
