"""The forensics commands of ``arl``: sql, query, export, lineage, import, report.

Each is a thin shell over one library function. :func:`register` adds them to
the main ``arl`` parser (``runners.cli``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from arl.ledger import ArlError, Ledger
from arl.ledger.store import STORE_HELP


def _store_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", metavar="URL", help=STORE_HELP)


def _cache_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cache",
        metavar="FILE",
        help="DuckDB file kept between runs and refreshed from the log incrementally "
        "(default: load into memory)",
    )


def _format_arg(p: argparse.ArgumentParser) -> None:
    from arl.queries.table import FORMATS

    p.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")


def _connect(args: argparse.Namespace, ledger: Ledger):
    from arl.queries.load import connect

    def progress(n: int) -> None:  # pages of 100,000: only large ledgers report
        print(f"  … {n:,} events loaded into DuckDB", file=sys.stderr, flush=True)

    return connect(ledger, args.cache, progress=progress if sys.stderr.isatty() else None)


def cmd_sql(args: argparse.Namespace) -> int:
    from arl.queries.table import render, run_sql

    with Ledger.open(args.store, read_only=True) as ledger:
        con = _connect(args, ledger)
    try:
        if args.query is None:
            from arl.queries.prompt import interactive

            return interactive(con, fmt=args.format)
        print(render(run_sql(con, args.query), args.format))
    finally:
        con.close()
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    from arl.queries.named import run_named
    from arl.queries.table import render

    with Ledger.open(args.store, read_only=True) as ledger:
        con = _connect(args, ledger)
    try:
        table = run_named(con, args.name, search=args.search, quartiles=args.quartiles, noise=args.noise)
        print(render(table, args.format))
    finally:
        con.close()
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from arl.queries.export import export

    if args.what in ("prov", "ro-crate"):
        return _export_provenance(args)
    if args.what == "openlineage":
        return _export_openlineage(args)
    if args.what == "mlflow":
        return _export_mlflow(args)
    if args.format is not None:
        raise _UsageError(f"--format is for prov (json, provn, ttl, jsonld), not {args.what}")
    with Ledger.open(args.store, read_only=True) as ledger:
        con = _connect(args, ledger)
    try:
        written = export(con, args.what, _folder(args))
    finally:
        con.close()
    for path, rows in written:
        print(f"{path}  ({rows:,} rows)")
    return 0


def _folder(args: argparse.Namespace) -> Path:
    if args.target is None:
        raise _UsageError(f"give a folder to export {args.what} into, e.g. `arl export {args.what} out/`")
    return Path(args.target)


def _export_provenance(args: argparse.Namespace) -> int:
    from arl.queries.export import export
    from arl.queries.provenance import PROV_FORMATS, export_prov, export_ro_crate
    from arl.ledger.searches import find_search

    folder = _folder(args)
    with Ledger.open(args.store, read_only=True) as ledger:
        search = find_search(ledger, args.search) if args.search else None
        if args.what == "prov":
            formats = (args.format,) if args.format else PROV_FORMATS[:2]
            for path in export_prov(ledger, folder, search, formats=formats):
                print(path)
            return 0
        if args.format is not None:
            raise _UsageError("--format is for prov; an RO-Crate holds PROV-JSON and PROV-N")
        con = _connect(args, ledger)
        with tempfile.TemporaryDirectory(prefix="arl-crate-") as staging:
            try:
                tables = [p for p, _ in export(con, "parquet", Path(staging))]
            finally:
                con.close()
            print(export_ro_crate(ledger, folder, search, tables=tables))
    return 0


def _export_openlineage(args: argparse.Namespace) -> int:
    from arl.queries.openlineage_export import export_openlineage
    from arl.ledger.searches import find_search

    if args.target is None:
        raise _UsageError("give a file (NDJSON) or a receiver's URL, e.g. "
                          "`arl export openlineage lineage.ndjson` or `arl export openlineage http://127.0.0.1:5000`")
    with Ledger.open(args.store, read_only=True) as ledger:
        search = find_search(ledger, args.search) if args.search else None
        counts = export_openlineage(ledger, args.target, search)
    states = ", ".join(f"{k} {v:,}" for k, v in counts.items() if k != "events")
    print(f"{counts['events']:,} OpenLineage events to {args.target} ({states or 'none'})")
    return 0


def _export_mlflow(args: argparse.Namespace) -> int:
    from arl.queries.mlflow_export import export_mlflow
    from arl.ledger.searches import find_search

    if args.tracking_uri is None:
        raise _UsageError("give the MLflow tracking store, e.g. --tracking-uri sqlite:///mlflow.db "
                          "or --tracking-uri http://127.0.0.1:5000")
    if args.target is not None:
        raise _UsageError(f"mlflow writes to --tracking-uri, not to {args.target!r}; drop it")
    with Ledger.open(args.store, read_only=True) as ledger:
        search = find_search(ledger, args.search) if args.search else None
        result = export_mlflow(ledger, args.tracking_uri, search, experiment=args.experiment)
    print(result.summary())
    return 0


def cmd_lineage_follow(args: argparse.Namespace) -> int:
    import signal
    import threading

    from arl.queries.openlineage_export import follow
    from arl.ledger.searches import find_search

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _signum, _frame: stop.set())
    with Ledger.open(args.store, read_only=True) as ledger:
        search = find_search(ledger, args.search) if args.search else None
        try:
            sent = follow(ledger, args.url, state=args.state, search=search, stop=stop)
        except KeyboardInterrupt:
            stop.set()
            sent = None
    print("stopped" + ("" if sent is None else f" after {sent:,} events"), file=sys.stderr)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from arl.queries.importers import IMPORTERS, import_path

    fmt, path = (args.first, args.second) if args.second is not None else (None, args.first)
    if fmt is not None and fmt not in IMPORTERS:
        raise _UsageError(f"unknown format {fmt!r}; arl imports: {', '.join(IMPORTERS)} "
                          "(or give only PATH and arl tells the format)")
    with Ledger.open(args.store) as ledger:
        result = import_path(ledger, path, fmt, name=args.name, score=args.score, direction=args.direction)
    print(result.summary())
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from arl.queries.report import write_report

    with Ledger.open(args.store, read_only=True) as ledger:
        con = _connect(args, ledger)
        try:
            summary = write_report(con, args.output, search=args.search, ledger=ledger)
        finally:
            con.close()
    print(summary)
    return 0


class _UsageError(ArlError):
    pass


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``sql``, ``query``, ``export``, ``lineage``, ``import`` and ``report`` to ``arl``'s subcommands."""
    from arl.queries.named import NAMED

    p = sub.add_parser("sql", help="run SQL over the ledger's views; no query: an interactive prompt")
    p.add_argument("query", nargs="?", help='one SQL statement, e.g. "SELECT label, count(*) FROM trials GROUP BY 1"')
    _format_arg(p)
    _store_arg(p)
    _cache_arg(p)
    p.set_defaults(func=cmd_sql)

    p = sub.add_parser("query", help="run a named forensic query")
    p.add_argument("name", metavar="NAME", help=f"one of: {', '.join(NAMED)}")
    p.add_argument("--search", metavar="S", help="a search id, id prefix or name (default: every search)")
    p.add_argument("--quartiles", action="store_true", help="label_mix: per quartile of each search")
    p.add_argument("--noise", type=float, metavar="X",
                   help="noise_audit: the run-to-run noise to judge keeps by (default: each search's floor)")
    _format_arg(p)
    _store_arg(p)
    _cache_arg(p)
    p.set_defaults(func=cmd_query)

    p = sub.add_parser(
        "export", help="views as Parquet or CSV, events as NDJSON, W3C PROV, an RO-Crate, OpenLineage or MLflow")
    p.add_argument("what", metavar="FORMAT",
                   choices=("parquet", "csv", "ndjson", "prov", "ro-crate", "openlineage", "mlflow"),
                   help="parquet, csv, ndjson, prov, ro-crate (into DIR); openlineage (into FILE or to URL); "
                   "mlflow (into --tracking-uri)")
    p.add_argument("target", nargs="?", metavar="DIR|FILE|URL",
                   help="folder to write into (created if missing); openlineage: an NDJSON file or a receiver's URL")
    p.add_argument("--search", metavar="S",
                   help="prov, ro-crate, openlineage, mlflow: one search (default: every search)")
    p.add_argument("--format", choices=("json", "provn", "ttl", "jsonld"),
                   help="prov: one serialization (default: PROV-JSON and PROV-N; ttl and jsonld are PROV-O)")
    p.add_argument("--tracking-uri", metavar="URI", help="mlflow: the tracking store (sqlite:///FILE, http://HOST:PORT)")
    p.add_argument("--experiment", metavar="NAME", default="arl",
                   help="mlflow: the experiment the searches go into (default: arl)")
    _store_arg(p)
    _cache_arg(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("lineage", help="stream OpenLineage run events as the ledger grows")
    lineage = p.add_subparsers(dest="lineage_command", metavar="COMMAND", required=True)
    p = lineage.add_parser(
        "follow", help="send each trial's run events to an OpenLineage receiver as they happen",
        description="Send OpenLineage run events to URL as the ledger grows; resumes after a restart from the "
        "position it stored (--state), resending at most one ledger event's runs under the same run ids.")
    p.add_argument("--url", required=True, metavar="URL",
                   help="the receiver (e.g. http://127.0.0.1:5000, posted to /api/v1/lineage), or an NDJSON file")
    p.add_argument("--state", type=Path, metavar="FILE",
                   help="where the follower keeps its position (default: .arl/lineage/<ledger and URL>.json)")
    p.add_argument("--search", metavar="S", help="one search (default: every search)")
    _store_arg(p)
    p.set_defaults(func=cmd_lineage_follow)

    from arl.queries.importers import FORMATS

    p = sub.add_parser(
        "import", help="import a trajectory recorded by another tool as a search (the format is detected)",
        description="Import a trajectory recorded by another tool as one search. Formats: "
        + "; ".join(f"{k}: {v}" for k, v in FORMATS.items()) + ".",
    )
    p.add_argument("first", metavar="[FORMAT] PATH",
                   help=f"the run to import, optionally preceded by its format ({', '.join(FORMATS)})")
    p.add_argument("second", nargs="?", metavar="", help=argparse.SUPPRESS)
    p.add_argument("--name", help="name of the new search (default: the run's folder or file name)")
    p.add_argument("--score", metavar="NAME",
                   help="recipes: the score column; openevolve, mlgym: the metric to rank by")
    p.add_argument("--direction", choices=("min", "max"),
                   help="recipes, aide, mlgym: is lower or higher better (default: from the source)")
    _store_arg(p)
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("report", help="write one self-contained HTML report")
    p.add_argument("--search", metavar="S", help="a search id, id prefix or name (default: every search)")
    p.add_argument("-o", "--output", type=Path, default=Path("report.html"), metavar="FILE",
                   help="where to write it (default: report.html)")
    _store_arg(p)
    _cache_arg(p)
    p.set_defaults(func=cmd_report)
