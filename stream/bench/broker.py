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

import asyncio
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from simulator.pacing import Pacer, chunk_size
from simulator.publisher import TelemetryPublisher
from stream.core.settings import Settings
from stream.kafka.admin import create_topics
from stream.kafka.security import aiokafka_kwargs
from stream.ops.harness import private_stack_settings, remove_or_keep
from stream.ops.stack import EmbeddedStack

#: Share of each run left out at the start (connection set-up, first fetches).
WARMUP_SHARE = 0.2


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(f"[bench broker] {msg}", file=sys.stderr, flush=True)


def _produce(settings: Settings, topic: str, rate: float, links: int, stop: threading.Event) -> None:
    """Paced chunks of about 10 ms of records; each value is its produce time in ns."""
    pub = TelemetryPublisher(settings, topic=topic)
    keys = [f"lk-{i:05d}".encode() for i in range(links)]
    chunk = chunk_size(links, rate)
    pacer = Pacer(rate, stop)
    done = 0
    while pacer.wait(done):
        now = str(time.time_ns()).encode()
        done += pub.publish_payloads((keys[(done + i) % links], now) for i in range(chunk))
    pub.flush()


async def _consume(
    settings: Settings, topic: str, wait_ms: int, seconds: float, rate: float, links: int
) -> list[float]:
    from aiokafka import AIOKafkaConsumer  # aiokafka: only this consumer needs it

    consumer = AIOKafkaConsumer(
        topic, group_id=None, auto_offset_reset="latest", fetch_max_wait_ms=wait_ms, **aiokafka_kwargs(settings)
    )
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


def run_broker_bench(
    settings: Settings, rate: float, seconds: float, links: int, waits: list[int], quiet: bool = False
) -> dict[str, Any]:
    """Start a private embedded stack, measure each fetch wait on its own topic, stop the stack."""
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
