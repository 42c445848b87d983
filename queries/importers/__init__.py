"""Importers: trajectories recorded by other tools, each brought in as one search (``kind`` import).

==============  =============================================================
format          what PATH is
==============  =============================================================
recipes         a blackboard folder of the paper's release (``results.tsv``)
autoresearch    a karpathy/autoresearch ``results.tsv``
aide            an AIDE ``journal.json`` (or its log folder)
openevolve      an OpenEvolve checkpoint folder, or its ``openevolve_output``
shinka          a ShinkaEvolve ``evolution_db.sqlite`` (or its results folder)
mlgym           an MLGym trajectory (``*.traj``)
==============  =============================================================

:func:`detect` tells them apart by content, not by name alone.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from arl.ledger import Ledger

from arl.queries.importers.aide import import_aide
from arl.queries.importers.autoresearch import import_autoresearch
from arl.queries.importers.core import Flagged, ImportResult, Lineage, SourceError
from arl.queries.importers.mlgym import import_mlgym
from arl.queries.importers.openevolve import import_openevolve
from arl.queries.importers.recipes import import_recipes
from arl.queries.importers.shinka import import_shinka, is_sqlite

IMPORTERS: dict[str, Callable[..., ImportResult]] = {
    "recipes": import_recipes,
    "autoresearch": import_autoresearch,
    "aide": import_aide,
    "openevolve": import_openevolve,
    "shinka": import_shinka,
    "mlgym": import_mlgym,
}

#: What each format's PATH is, for messages and ``arl import --help``.
FORMATS: dict[str, str] = {
    "recipes": "a blackboard folder of the paper's release (results.tsv)",
    "autoresearch": "a karpathy/autoresearch results.tsv",
    "aide": "an AIDE journal.json or its log folder",
    "openevolve": "an OpenEvolve checkpoint folder or its openevolve_output",
    "shinka": "a ShinkaEvolve evolution_db.sqlite or its results folder",
    "mlgym": "an MLGym trajectory (.traj)",
}

#: The options each importer takes besides ``name``.
OPTIONS: dict[str, frozenset[str]] = {
    "recipes": frozenset({"score", "direction"}),
    "autoresearch": frozenset(),
    "aide": frozenset({"direction"}),
    "openevolve": frozenset({"score"}),
    "shinka": frozenset(),
    "mlgym": frozenset({"score", "direction"}),
}


def detect(path: str | Path) -> str:
    """The format of what is at ``path``, or a :class:`SourceError` naming the formats arl imports."""
    p = Path(path).expanduser()
    if not p.exists():
        raise SourceError(f"no folder or file at {p.resolve()}; give the run to import")
    found = _detect(p.resolve())
    if found is None:
        known = "; ".join(f"{k}: {v}" for k, v in FORMATS.items())
        raise SourceError(f"cannot tell what {p} was recorded by; arl imports {known} — "
                          "name the format: arl import FORMAT PATH")
    return found


def _detect(p: Path) -> str | None:
    if p.is_dir():
        if (p / "results.tsv").is_file():
            return _tsv_format(p / "results.tsv")
        if (p / "programs").is_dir() or (p / "checkpoints").is_dir() or (p / "openevolve_output").is_dir() \
                or any((c / "programs").is_dir() for c in p.glob("checkpoint_*")):
            return "openevolve"
        if any(_sqlite_with_programs(f) for f in (*p.glob("*.sqlite"), *p.glob("*.db"))):
            return "shinka"
        if any((p / n).is_file() for n in ("journal.json", "logs/journal.json")) or any(p.glob("logs/*/journal.json")):
            return "aide"
        if any(p.glob("*.traj")):
            return "mlgym"
        return None
    if is_sqlite(p):
        return "shinka" if _sqlite_with_programs(p) else None
    if p.suffix == ".tsv" or p.name == "results.tsv":
        return _tsv_format(p)
    head = _head(p)
    if p.suffix == ".traj" or ('"trajectory"' in head and '"info"' in head):
        return "mlgym"
    if '"nodes"' in head:
        return "aide"
    if '"parent_id"' in head and '"code"' in head and p.parent.name == "programs":
        return "openevolve"
    return None


def _tsv_format(path: Path) -> str | None:
    try:
        with path.open(encoding="utf-8", errors="replace") as f:
            header = {h.strip() for h in f.readline().split("\t")}
    except OSError:
        return None
    if {"exp_id", "status", "hypothesis"} <= header:
        return "recipes"
    if {"commit", "val_bpb", "status", "description"} <= header:
        return "autoresearch"
    return None


def _head(path: Path, size: int = 65536) -> str:
    try:
        with path.open("rb") as f:
            return f.read(size).decode("utf-8", errors="replace")
    except OSError:
        return ""


def _sqlite_with_programs(path: Path) -> bool:
    if not is_sqlite(path):
        return False
    try:
        con = sqlite3.connect(f"file:{quote(str(path))}?mode=ro&immutable=1", uri=True)
        try:
            return bool(con.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='programs'").fetchall())
        finally:
            con.close()
    except sqlite3.Error:
        return False


def import_path(ledger: Ledger, path: str | Path, fmt: str | None = None, **options: Any) -> ImportResult:
    """Import ``path`` as ``fmt`` (detected when None); options a format does not take are an error."""
    fmt = fmt or detect(path)
    if fmt not in IMPORTERS:
        raise SourceError(f"unknown format {fmt!r}; arl imports: {', '.join(IMPORTERS)}")
    given = {k: v for k, v in options.items() if v is not None}
    extra = set(given) - OPTIONS[fmt] - {"name"}
    if extra:
        takes = sorted(k for k, v in OPTIONS.items() if extra <= v)
        flags = ", ".join(f"--{k}" for k in sorted(extra))
        raise SourceError(f"{flags} does not apply to {fmt} imports"
                          + (f" (only to {', '.join(takes)})" if takes else "") + "; drop it")
    return IMPORTERS[fmt](ledger, path, **given)


__all__ = [
    "FORMATS",
    "IMPORTERS",
    "Flagged",
    "ImportResult",
    "Lineage",
    "SourceError",
    "detect",
    "import_aide",
    "import_autoresearch",
    "import_mlgym",
    "import_openevolve",
    "import_path",
    "import_recipes",
    "import_shinka",
]
