"""Token prices for the cost query: a user-editable TOML table, loaded into DuckDB as ``prices``.

Looked up in order: the file named by ``$ARL_PRICES``, ``~/.config/arl/prices.toml``,
then the default shipped with arl (``queries/prices.toml``: every model free).
"""

from __future__ import annotations

import math
import os
import tomllib
from pathlib import Path

import duckdb

from arl.queries.errors import QueryError

ENV = "ARL_PRICES"
USER_FILE = Path("~/.config/arl/prices.toml")
DEFAULT_FILE = Path(__file__).with_name("prices.toml")


def prices_file() -> Path:
    named = os.environ.get(ENV)
    if named:
        path = Path(named).expanduser()
        if not path.is_file():
            raise QueryError(f"{ENV}={named} is not a file; point it at a prices TOML file "
                             f"(copy {DEFAULT_FILE})")
        return path
    user = USER_FILE.expanduser()
    return user if user.is_file() else DEFAULT_FILE


def load_prices(path: Path | None = None) -> dict[str, tuple[float, float]]:
    """model → (USD per million prompt tokens, USD per million completion tokens)."""
    path = path or prices_file()
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise QueryError(f"cannot read the prices table {path}: {' '.join(str(e).split())}; "
                         f"fix it (see {DEFAULT_FILE} for the format)") from None
    models = data.get("models", {})
    if not isinstance(models, dict):
        raise QueryError(f"{path}: [models] must be a table of model names; see {DEFAULT_FILE}")
    out: dict[str, tuple[float, float]] = {}
    for model, entry in models.items():
        try:
            prompt, completion = float(entry["prompt"]), float(entry["completion"])
        except (KeyError, TypeError, ValueError):
            raise QueryError(f"{path}: models.{model!r} needs numbers prompt and completion "
                             "(USD per million tokens)") from None
        if not (math.isfinite(prompt) and math.isfinite(completion)) or prompt < 0 or completion < 0:
            raise QueryError(f"{path}: models.{model!r} prices must be finite and not negative")
        out[model] = (prompt, completion)
    return out


def register_prices(con: duckdb.DuckDBPyConnection) -> None:
    """(Re)create the temporary table ``prices(model, prompt_per_mtok, completion_per_mtok)``."""
    rows = [(m, p, c) for m, (p, c) in load_prices().items()]
    con.execute("CREATE OR REPLACE TEMP TABLE prices "
                "(model VARCHAR, prompt_per_mtok DOUBLE, completion_per_mtok DOUBLE)")
    if rows:
        con.executemany("INSERT INTO prices VALUES (?, ?, ?)", rows)
