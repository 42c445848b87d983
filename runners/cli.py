"""The ``arl`` command: parse, call one library function, print.

Errors a user can fix end in one line on stderr and exit code 2; a failed
verification exits 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from ledger import ArlError, Ledger, __version__
from ledger.verify import verify


def _store_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--store",
        metavar="URL",
        help="ledger to use: sqlite:///path/ledger.db or postgresql://user@host:port/db "
        "(default: $ARL_STORE, else .arl/ledger.db in the working directory)",
    )


def cmd_verify(args: argparse.Namespace) -> int:
    with Ledger.open(args.store, create=False) as ledger:
        def progress(n: int) -> None:
            print(f"  … {n:,} events checked", file=sys.stderr)

        report = verify(ledger, expect_head=args.expect_head, progress=progress)
        where = ledger.url.display()
    if report.ok:
        rate = report.events / report.seconds if report.seconds else 0.0
        print(
            f"ok: {report.events:,} events and {report.blobs:,} blobs in {where} verified "
            f"in {report.seconds:.2f} s ({rate:,.0f} events/s)\nchain head: {report.head}"
        )
        return 0
    print(f"TAMPERED: {report.problem}", file=sys.stderr)
    return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="arl", description="arl — the auto-research ledger"
    )
    parser.add_argument("--version", action="version", version=f"arl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "verify",
        help="recompute the hash chain over every event and blob; exit 1 naming the first change",
    )
    _store_arg(p)
    p.add_argument(
        "--expect-head",
        metavar="HEX",
        help="chain head recorded earlier (printed by a previous verify): "
        "also catches removal or rewrite of the newest events",
    )
    p.set_defaults(func=cmd_verify)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return func(args)
    except ArlError as e:
        print(f"arl: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("arl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
