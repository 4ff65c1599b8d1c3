"""``bwp bench redis``: the worker's Redis stage alone, on one server or a local cluster.

Starts a private Redis (the embedded stack's binary) on free loopback ports: one plain
server, or with ``--cluster N`` an N-primary Redis Cluster (:mod:`stream.redis_cluster`),
reached through the cluster client exactly as ``BWP_REDIS_CLUSTER=true`` makes the worker
do. It then feeds ``--links`` links x ``--steps`` steps through
:meth:`WindowStore.update_batch` and :meth:`WindowStore.ack` in micro-batches of
``--batch`` records (what one worker micro-batch costs in Redis: window updates plus the
acknowledgements) and reports states/s, median of ``--repeats`` passes over fresh keys.
Everything it started is stopped and its directory removed.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from stream.core.errors import BwpError, ConfigError
from stream.core.records import WINDOW, Telemetry
from stream.core.settings import Settings, load_settings
from stream.ops.redis_cluster import LocalRedisCluster
from stream.pipeline.redis_window import WindowStore
from stream.pipeline.window import Outcome


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(f"[bench redis] {msg}", file=sys.stderr, flush=True)


def _records(links: int, steps: int) -> list:

    now = int(time.time() * 1000)
    # (links * steps) states, step-major as a fleet publishes them
    return [
        Telemetry(
            link_id=f"lk-{k:05d}",
            seq=s,
            ts_ms=now + s,
            latency_ms=1.0 + k % 7,
            bandwidth_mbps=100.0 + s,
            packet_loss=0.001,
            reliability=0.99,
            profile="datacenter",
        )  # fmt: skip
        for s in range(steps)
        for k in range(links)
    ]


async def _pass(settings: Settings, records: list, batch: int, prefix: str) -> tuple[float, int]:
    """Seconds to push ``records`` through update + ack, ``batch`` records at a time, and
    how many of them completed a window."""
    client = settings.redis_client(asyncio=True)
    try:
        store = WindowStore(client, prefix=prefix, ttl_s=600)
        await store.load_scripts()
        full = 0
        t0 = time.perf_counter()
        for i in range(0, len(records), batch):
            part = records[i : i + batch]
            upd = await store.update_batch(part)
            await store.ack((r.link_id, r.seq) for r, ok in zip(part, upd.has_window()) if ok)
            full += upd.count(Outcome.FULL)
        return time.perf_counter() - t0, full
    finally:
        await client.aclose()


def run_redis_bench(
    cluster: int, links: int, steps: int, batch: int, repeats: int, quiet: bool = False
) -> dict[str, Any]:
    """Start the private Redis, measure ``repeats`` passes, stop it. Returns the result."""
    for name, v in (("links", links), ("steps", steps), ("batch", batch), ("repeats", repeats)):
        if v < 1:
            raise ConfigError(f"--{name} must be >= 1, got {v}")
    if cluster < 0:
        raise ConfigError(f"--cluster must be >= 0 nodes, got {cluster}")
    tmp = Path(tempfile.mkdtemp(prefix="bwp-bench-redis-"))
    nodes = LocalRedisCluster(tmp, nodes=max(1, cluster), cluster=cluster > 0)
    try:
        _log(f"starting {'a ' + str(cluster) + '-node cluster' if cluster else 'one server'} in {tmp}", quiet)
        nodes.start()
        settings = load_settings(redis_url=nodes.url, redis_cluster=cluster > 0)
        records = _records(links, steps)
        secs = []
        want = links * max(0, steps - WINDOW + 1)
        for r in range(repeats):
            took, full = asyncio.run(_pass(settings, records, batch, prefix=f"b{r}"))
            if full != want:  # a fast but wrong store is no result
                raise BwpError(f"pass {r + 1}: {full} states completed a window, expected {want}")
            secs.append(took)
            _log(f"pass {r + 1}/{repeats}: {len(records) / secs[-1]:,.0f} states/s", quiet)
    finally:
        nodes.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    rates = [round(len(records) / s) for s in secs]
    return {
        "redis": f"cluster of {cluster} primaries" if cluster else "one server",
        "links": links,
        "steps": steps,
        "batch": batch,
        "states_per_s": round(statistics.median(rates)),
        "runs_states_per_s": rates,
        "definition": "window update + acknowledgement of every state, micro-batches of --batch records, one client",
    }
