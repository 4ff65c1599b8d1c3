"""The ``bwp`` command line.

Subcommands live next to the code they drive; each module exposes
``register(subparsers)``. Heavy imports (TensorFlow, Faust) happen inside the
handlers, so ``bwp --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading
from typing import Any, Sequence

from stream.errors import BwpError, Terminated
from stream.settings import Settings, load_settings

# Modules that contribute subcommands, in --help order.
COMMAND_MODULES = (
    "stream.commands",
    "simulator.commands",
    "ml.commands",
    "ml.policy_commands",
    "stream.lifecycle_commands",
)

_SETTINGS_FLAGS: tuple[tuple[str, str, type, str], ...] = (
    ("--bootstrap", "kafka_bootstrap", str, "Kafka bootstrap servers (env BWP_KAFKA_BOOTSTRAP, default 127.0.0.1:9092)"),
    ("--redis-url", "redis_url", str, "Redis URL (env BWP_REDIS_URL, default redis://127.0.0.1:6379/0)"),
    ("--telemetry-topic", "telemetry_topic", str, "telemetry topic (env BWP_TELEMETRY_TOPIC, default bwp.telemetry)"),
    ("--decisions-topic", "decisions_topic", str, "decisions topic (env BWP_DECISIONS_TOPIC, default bwp.decisions)"),
    ("--dlq-topic", "dlq_topic", str, "dead-letter topic (env BWP_DLQ_TOPIC, default bwp.telemetry.dlq)"),
    ("--model-dir", "model_dir", str, "model registry directory (env BWP_MODEL_DIR, default models)"),
    ("--state-dir", "state_dir", str, "embedded stack state directory (env BWP_STATE_DIR, default .bwp)"),
)


def add_settings_flags(parser: argparse.ArgumentParser, *names: str) -> None:
    """Add the CLI flags that override settings. ``names`` picks a subset (by flag); none = all."""
    group = parser.add_argument_group("settings (flags override BWP_* env vars)")
    for flag, dest, typ, help_ in _SETTINGS_FLAGS:
        if names and flag not in names:
            continue
        group.add_argument(flag, dest=f"setting_{dest}", type=typ, default=None, help=help_)


def settings_from_args(args: argparse.Namespace, **extra: Any) -> Settings:
    """Settings from env, overridden by whatever ``--flag`` the user gave (and ``extra``)."""
    overrides = {k[len("setting_") :]: v for k, v in vars(args).items() if k.startswith("setting_")}
    overrides.update(extra)
    return load_settings(**overrides)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bwp",
        description="Streaming bandwidth predictor for DWCP networks: per-link telemetry in, "
        "an LSTM bandwidth forecast and a Double-DQN allocation decision out.",
        epilog="Quick start: `make demo`. Every subcommand has --help.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # module not written (yet): its commands are simply absent
                continue
            raise
        mod.register(sub)
    _register_bench(sub)
    return parser


def _register_bench(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="benchmarks that print JSON", description="Benchmarks that print JSON.")
    bsub = bench.add_subparsers(dest="bench_command", metavar="BENCH", required=True)
    for name in ("stream.bench", "stream.bench_broker", "stream.bench_redis", "ml.bench"):
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        mod.register(bsub)


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
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
