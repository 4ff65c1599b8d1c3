"""The ``bwp`` command line.

One module per command group in this package, each with ``register(subparsers)``.
Heavy imports (TensorFlow, Faust, confluent-kafka) happen inside the handlers, so
``bwp --help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from stream.cli import bench as bench_cmds
from stream.cli import compat as compat_cmds
from stream.cli import compression as compression_cmds
from stream.cli import lifecycle as lifecycle_cmds
from stream.cli import models as models_cmds
from stream.cli import policy as policy_cmds
from stream.cli import run as run_cmds
from stream.cli import serve as serve_cmds
from stream.cli import simulate as simulate_cmds
from stream.core.errors import BwpError, Terminated

# Command groups, in --help order; each module has ``register(subparsers)``.
COMMAND_GROUPS = (
    run_cmds,
    serve_cmds,
    simulate_cmds,
    models_cmds,
    compression_cmds,
    policy_cmds,
    lifecycle_cmds,
    bench_cmds,
    compat_cmds,
)


def build_parser() -> argparse.ArgumentParser:
    """The ``bwp`` argument parser with every command group."""
    parser = argparse.ArgumentParser(
        prog="bwp",
        description="Streaming bandwidth predictor for DWCP networks: per-link telemetry in; per state a "
        "p10/p50/p90 forecast of the mean bandwidth over the next 1, 10 and 60 steps and an allocation "
        "decision out. The forecast comes from the LSTM where it beat naive forecasters on validation, else "
        "from a naive forecaster (forecast_source says which); the allocation from the Double-DQN or a tuned "
        "rule, whichever won validation (policy says which).",
        epilog="Quick start: `make demo`. Every subcommand has --help.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in COMMAND_GROUPS:
        group.register(sub)
    return parser


def _on_sigterm(signum: int, _frame: Any) -> None:
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``bwp``; returns the exit status (2 on a bwp error, 130 on Ctrl-C, 143 on SIGTERM)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Python's default SIGTERM ends the process at once: a bench or demo killed that way
    # left its worker, broker and Redis running. Commands with their own handling
    # (the worker, the recorder) install theirs on top of this one.
    in_main = threading.current_thread() is threading.main_thread()  # signal.signal works there only
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main else None
    try:
        rc = args.func(args)
    except BwpError as exc:
        print(f"bwp {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Terminated:
        print(f"bwp {args.command}: terminated (SIGTERM)", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"bwp {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
