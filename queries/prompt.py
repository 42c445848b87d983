"""``arl sql`` without a query: an interactive SQL prompt with history."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import duckdb

from arl.queries.errors import QueryError
from arl.queries.table import render, run_sql
from arl.queries.views import VIEWS

HELP = """Statements end with ';'. Views: {views}.
  .views           list the views and their columns
  .format FMT      table, csv or json
  .quit            leave (or Ctrl-D)"""


def history_path() -> Path:
    return Path(os.environ.get("ARL_SQL_HISTORY") or Path.home() / ".arl_sql_history")


def interactive(con: duckdb.DuckDBPyConnection, *, fmt: str = "table") -> int:
    """Read statements until ``.quit`` or end of input; history persists across sessions."""
    readline = _readline()
    tty = sys.stdin.isatty()
    if tty:
        print(HELP.format(views=", ".join(VIEWS)))
    buffer: list[str] = []
    try:
        while True:
            try:
                line = input(("...> " if buffer else "arl> ") if tty else "")
            except EOFError:
                break
            command = line.strip()
            if not buffer and command.startswith("."):
                if command in (".quit", ".exit"):
                    break
                fmt = _dot(con, command, fmt)
                continue
            if not command and not buffer:
                continue
            buffer.append(line)
            if command.endswith(";"):
                statement = "\n".join(buffer)
                if readline is not None and not tty:  # a terminal records lines itself
                    readline.add_history(statement)
                _run(con, statement, fmt)
                buffer.clear()
        if buffer and "".join(buffer).strip():
            _run(con, "\n".join(buffer), fmt)
    finally:
        if readline is not None:
            try:
                readline.write_history_file(history_path())
            except OSError:
                pass  # history is a convenience; an unwritable home must not fail the session
    return 0


def _run(con: duckdb.DuckDBPyConnection, statement: str, fmt: str) -> None:
    try:
        print(render(run_sql(con, statement.strip().rstrip(";")), fmt), flush=True)
    except QueryError as e:
        print(f"error: {e}", flush=True)


def _dot(con: duckdb.DuckDBPyConnection, command: str, fmt: str) -> str:
    word, _, arg = command.partition(" ")
    if word == ".views":
        for name in VIEWS:
            cols = [r[0] for r in con.execute(f'DESCRIBE "{name}"').fetchall()]
            print(f"{name}: {', '.join(cols)}")
    elif word == ".format" and arg.strip() in ("table", "csv", "json"):
        return arg.strip()
    else:
        print(HELP.format(views=", ".join(VIEWS)))
    return fmt


def _readline():
    try:
        import readline
    except ImportError:  # Windows without pyreadline: the prompt works, without history
        return None
    path = history_path()
    try:
        if path.exists():
            readline.read_history_file(path)
    except OSError:
        pass
    readline.set_history_length(1000)
    return readline
