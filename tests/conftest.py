"""Shared fixtures: real SQLite files and real PostgreSQL databases made per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.llama import llama_server  # noqa: F401 - one real model server for the whole session
from tests.needs import require

PG_HOST = os.environ.get("ARL_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("ARL_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("ARL_TEST_PG_USER", "postgres")


def _pg_admin():
    import psycopg

    return psycopg.connect(
        host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres",
        autocommit=True, connect_timeout=3,
    )


def _pg_available() -> str | None:
    try:
        _pg_admin().close()
    except Exception as e:  # noqa: BLE001 - any failure means "not here"
        return str(e).splitlines()[0]
    return None


#: Real data no one here wrote (../shared/fixtures beside the checkout; /work/shared/fixtures
#: for a clone elsewhere on this machine, as CI's is).
_SHARED = [Path(__file__).resolve().parents[2] / "shared" / "fixtures", Path("/work/shared/fixtures")]


def shared_path(*parts: str) -> Path:
    """Where a shared fixture is (or would be), without checking that it is there."""
    root = next((r for r in _SHARED if r.is_dir()), _SHARED[0])
    return root.joinpath(*parts)


def shared_fixtures(*parts: str) -> Path:
    """A path under the shared fixtures; skip when absent (fail under ARL_REQUIRE_FIXTURES=1, as in CI)."""
    path = shared_path(*parts)
    require("fixtures", None if path.exists() else
            f"the shared fixture {path} is not here (looked in {' and '.join(str(r) for r in _SHARED)})")
    return path


def pytest_runtest_setup(item: pytest.Item) -> None:
    marker = item.get_closest_marker("shared")
    if marker is not None:
        shared_fixtures(*marker.args)


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


def require_postgres() -> None:
    """Skip (or, under ARL_REQUIRE_POSTGRES=1 as in CI, fail) when the server is absent."""
    problem = _pg_available()
    require("postgres", f"PostgreSQL at {PG_HOST}:{PG_PORT} is unreachable: {problem}" if problem else None)


def create_pg_database() -> str:
    require_postgres()
    name = f"arl_test_{uuid.uuid4().hex[:12]}"
    with _pg_admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_pg_database(name: str) -> None:
    with _pg_admin() as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


def pg_url_for(name: str) -> str:
    return f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    name = create_pg_database()
    try:
        yield pg_url_for(name)
    finally:
        drop_pg_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request) -> str:
    """Each test using this runs once on SQLite and once on PostgreSQL."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
