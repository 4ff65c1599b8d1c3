"""``bwp bench broker``: the broker's share of produce-to-decision latency, without a worker.

A private embedded stack (tansu and Redis, as ``bwp bench pipeline`` starts), the same
paced publisher (``TelemetryPublisher``, chunks of about 10 ms), and a bare aiokafka
consumer (the client the worker's Faust app uses) that only timestamps what it receives.
Each record carries its produce wall-clock time; the latency is receive time minus that
(same machine, same clock). Run once per ``--fetch-wait-ms`` value, on one stack.

This is the floor under the worker's latency: what a state spends between the probe's
``produce()`` and the worker's fetch, for a given ``BWP_FETCH_MAX_WAIT_MS``. Compare it
with ``bwp bench pipeline --rate R`` at the same rate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from stream.cli import settings_from_args
from stream.settings import Settings

#: Share of each run left out at the start (connection set-up, first fetches).
WARMUP_SHARE = 0.2


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``bwp bench broker``."""
    p = sub.add_parser(
        "broker",
        help="produce-to-fetch latency of the embedded broker alone, per fetch wait (JSON)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--rate", type=float, default=5000.0, help="records/s, paced (default 5000)")
    p.add_argument("--seconds", type=float, default=15.0, help="seconds per fetch-wait value (default 15)")
    p.add_argument("--links", type=int, default=1000, help="distinct keys (default 1000)")
    p.add_argument("--fetch-wait-ms", type=int, action="append", default=None, metavar="MS",
                   help="consumer fetch_max_wait_ms; repeat to compare (default BWP_FETCH_MAX_WAIT_MS)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="JSON only, no progress on stderr")
    # No settings flags: the bench starts its own stack (partitions from BWP_PARTITIONS).
    p.set_defaults(func=_bench_broker)


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(f"[bench broker] {msg}", file=sys.stderr, flush=True)


def _produce(settings: Settings, topic: str, rate: float, links: int, stop: threading.Event) -> None:
    """Paced chunks of about 10 ms of records; each value is its produce time in ns."""
    from simulator.publisher import Pacer, TelemetryPublisher, chunk_size

    pub = TelemetryPublisher(settings, topic=topic)
    keys = [f"lk-{i:05d}".encode() for i in range(links)]
    chunk = chunk_size(links, rate)
    pacer = Pacer(rate, stop)
    done = 0
    while pacer.wait(done):
        now = str(time.time_ns()).encode()
        done += pub.publish_payloads((keys[(done + i) % links], now) for i in range(chunk))
    pub.flush()


async def _consume(settings: Settings, topic: str, wait_ms: int, seconds: float, rate: float, links: int) -> list[float]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=settings.kafka_bootstrap, group_id=None, auto_offset_reset="latest",
        fetch_max_wait_ms=wait_ms,
    )  # plaintext: the private embedded stack
    await consumer.start()
    lat: list[float] = []
    stop = threading.Event()
    producer = threading.Thread(target=_produce, args=(settings, topic, rate, links, stop), daemon=True)
    try:
        await consumer.seek_to_end()
        producer.start()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            batch = await consumer.getmany(timeout_ms=200)
            now = time.time_ns()
            for msgs in batch.values():
                lat.extend((now - int(m.value)) / 1e6 for m in msgs)
    finally:
        stop.set()
        producer.join(10)
        await consumer.stop()
    return lat


def run_broker_bench(settings: Settings, rate: float, seconds: float, links: int, waits: list[int], quiet: bool = False) -> dict[str, Any]:
    """Start a private embedded stack, measure each fetch wait on its own topic, stop the stack."""
    from stream.bench import private_stack_settings, remove_or_keep
    from stream.stack import EmbeddedStack, create_topics

    tmp = Path(tempfile.mkdtemp(prefix="bwp-bench-broker-"))
    s = private_stack_settings(settings, tmp)
    stack = EmbeddedStack(s)
    _log(f"starting a private embedded stack in {tmp}", quiet)
    runs = []
    ok = False
    try:
        stack.up(partitions=s.partitions)  # in the try: down() stops whatever up() started
        for wait in waits:
            topic = f"bench-broker-{uuid.uuid4().hex[:8]}"
            create_topics(s, [topic], s.partitions)
            _log(f"fetch wait {wait} ms: {rate:,.0f} records/s for {seconds:.0f} s", quiet)
            lat = np.asarray(asyncio.run(_consume(s, topic, wait, seconds, rate, links)))
            lat = lat[int(len(lat) * WARMUP_SHARE) :]
            if len(lat) == 0:
                raise RuntimeError(f"fetch wait {wait} ms: no record came back from the broker")
            runs.append({
                "fetch_max_wait_ms": wait,
                "records": int(len(lat)),
                "latency_ms": {q: round(float(np.percentile(lat, p)), 1) for q, p in (("p50", 50), ("p99", 99), ("max", 100))},
            })  # fmt: skip
        ok = True
    finally:
        stack.down()
        remove_or_keep(tmp, ok)
    return {
        "rate": rate,
        "seconds": seconds,
        "partitions": s.partitions,
        "runs": runs,
        "latency_definition": "consumer receive time - the record's produce() wall-clock time (same machine); "
        f"first {WARMUP_SHARE:.0%} of each run left out",
    }


def _bench_broker(args: argparse.Namespace) -> int:
    if args.rate <= 0 or args.seconds <= 0 or args.links < 1:
        print("bwp bench broker: --rate and --seconds must be > 0 and --links >= 1", file=sys.stderr)
        return 2
    settings = settings_from_args(args)
    waits = args.fetch_wait_ms or [settings.fetch_max_wait_ms]
    if any(w < 0 for w in waits):
        print(f"bwp bench broker: --fetch-wait-ms must be >= 0, got {waits}", file=sys.stderr)
        return 2
    res = run_broker_bench(settings, args.rate, args.seconds, args.links, waits, quiet=args.json)
    print(json.dumps(res, indent=None if args.json else 2))
    return 0
