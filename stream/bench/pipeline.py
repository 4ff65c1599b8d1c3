"""``bwp bench pipeline``: throughput and latency of one worker on the embedded stack.

Two modes (one per run, so each number has its own command):

* no ``--rate``: **throughput**. The telemetry topic is pre-filled (as fast as the
  publisher goes) while one worker (its own process) consumes; ``states_per_s`` is the
  rate of decisions reaching the decisions topic in steady state (every state after
  each link's 9th completes a window, so decisions/s == states/s there), measured by
  the broker timestamps of the decisions.
* ``--rate R``: **latency**. The publisher is paced at R states/s; for every decision,
  ``decided_at_ms`` minus the time its state was produced (the publisher records the
  wall-clock time of every paced chunk; same machine, same clock).
  ``latency_to_reader_ms`` is the time to the bench's own reader of the decisions
  topic, which fetches at most every 100 ms (so that reading loads the broker little).

Both report ``model_bound_states_per_s``: ``Predictor.predict`` on batches of 1024
real windows in the bench process (the model alone, no Kafka/Redis).
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from ml.serving.predictor import load_predictor
from simulator.generator import FleetSimulator
from simulator.pacing import chunk_size
from simulator.publisher import TelemetryPublisher
from stream.core.settings import Settings
from stream.metrics.scrape import by_label, scrape, total
from stream.ops.harness import (
    ProduceClock,
    WorkerSubprocess,
    ensure_model,
    private_stack_settings,
    publish_timed,
    remove_or_keep,
    wait_until,
)
from stream.ops.stack import EmbeddedStack, free_port


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(f"[bench] {msg}", file=sys.stderr, flush=True)


def model_bound(settings: Settings, links: int, seconds: float = 4.0, batch: int = 1024) -> tuple[float, str]:
    """Raw Predictor.predict throughput (states/s) on batches of ``batch`` simulator windows."""
    pred = load_predictor(settings.model_dir)
    sim = FleetSimulator("mixed", max(batch, links), seed=7, start_ms=0)
    hist = np.stack([sim.step() for _ in range(10)], axis=1)[:batch]  # (batch, 10, 4)
    pred.predict(hist)  # warm-up (graph tracing)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        pred.predict(hist)
        n += batch
    return n / (time.perf_counter() - t0), pred.version


class DecisionCollector(threading.Thread):
    """Reads the decisions topic from the start; keeps (broker ts ms, receive ms, [parsed])."""

    def __init__(self, settings: Settings, parse: bool) -> None:
        super().__init__(daemon=True)
        from confluent_kafka import Consumer, TopicPartition  # confluent-kafka: only code that talks to a broker

        self.c = Consumer(settings.confluent_config(**{
            "group.id": f"bench-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
            "auto.offset.reset": "earliest", "log.connection.close": False,
            # At most ~10 fetches/s: the embedded broker's fetch cost grows with the batches
            # stored in the topic (docs/pipeline.md, Performance), and this reader is the
            # bench's instrument, not the load under test. Latency uses decided_at_ms.
            "fetch.wait.max.ms": 100, "fetch.min.bytes": 1_000_000,
        }))  # fmt: skip
        self.c.assign([TopicPartition(settings.decisions_topic, p, 0) for p in range(settings.partitions)])
        self.parse = parse
        self.stop_event = threading.Event()
        self.broker_ms: list[int] = []
        self.recv_ms: list[int] = []
        self.decisions: list[dict] = []
        self.lock = threading.Lock()

    def run(self) -> None:
        """Collect decisions until stopped: broker timestamp and receive time of each."""
        while not self.stop_event.is_set():
            msgs = self.c.consume(2000, timeout=0.1)
            now = time.time_ns() // 1_000_000
            ts, parsed = [], []
            for m in msgs:
                if m.error() is not None:
                    continue
                ts.append(m.timestamp()[1])
                if self.parse:
                    parsed.append(json.loads(m.value()))
            with self.lock:
                self.broker_ms.extend(ts)
                self.recv_ms.extend([now] * len(ts))
                self.decisions.extend(parsed)
        self.c.close()

    def count(self) -> int:
        """Decisions collected so far."""
        with self.lock:
            return len(self.broker_ms)


def _stage_means(port: int) -> dict[str, float]:
    """Mean time per micro-batch of each worker stage, plus the mean batch size, from /metrics."""
    samples = scrape(port, timeout_s=2.0)
    if samples is None:
        return {}
    sums = by_label(samples, "bwp_stage_duration_seconds_sum", "stage")
    counts = by_label(samples, "bwp_stage_duration_seconds_count", "stage")
    out = {k: round(1000 * sums[k] / counts[k], 2) for k in sums if counts.get(k)}
    n_sum, n_count = total(samples, "bwp_batch_records_sum"), total(samples, "bwp_batch_records_count")
    if n_sum is not None and n_count:
        out["mean_batch_records"] = round(n_sum / n_count, 1)
    return out


def _pct(xs: np.ndarray, q: float) -> float | None:
    return round(float(np.percentile(xs, q)), 2) if len(xs) else None


def run_pipeline_bench(
    settings: Settings,
    links: int,
    seconds: float,
    rate: float | None,
    quiet: bool = False,
    keep_logs: Path | None = None,
) -> dict[str, Any]:
    """Start a private embedded stack + one worker process, measure, stop everything. Returns the result."""
    ensure_model(settings.model_dir, quiet)
    tmp = Path(tempfile.mkdtemp(prefix="bwp-bench-"))
    uid = uuid.uuid4().hex[:8]
    s = private_stack_settings(settings, tmp, **{
        "telemetry_topic": f"bench-{uid}.telemetry", "decisions_topic": f"bench-{uid}.decisions",
        "dlq_topic": f"bench-{uid}.dlq", "consumer_group": f"bench-{uid}", "key_prefix": f"bench{uid}",
        "metrics_port": 0,
    })  # fmt: skip
    stack = EmbeddedStack(s)
    _log(f"starting a private embedded stack in {tmp}", quiet)
    worker = None
    collector = None
    ok = False
    try:
        stack.up(partitions=s.partitions)  # in the try: down() stops whatever up() started
        mb, version = model_bound(s, links)
        _log(f"model {version}: {mb:,.0f} states/s raw predict on batches of 1024", quiet)
        metrics_port = free_port()
        worker = WorkerSubprocess(s, tmp / "worker.log", ["--metrics-port", str(metrics_port)]).start()
        collector = DecisionCollector(s, parse=rate is not None)
        collector.start()
        sim = FleetSimulator("mixed", links, seed=11, start_ms=int(time.time() * 1000), step_ms=1000)
        pub = TelemetryPublisher(s, **{"log.connection.close": False})
        # Warm-up: the first window completes at step 10; wait for its decisions (group joined, model traced).
        for _ in range(10):
            pub.publish_payloads(sim.payloads())
        pub.flush()
        if not wait_until(lambda: collector.count() >= links, 180):
            raise RuntimeError(f"worker produced no decisions within 180 s; log tail:\n{worker.log_tail()}")
        _log("worker is up and deciding", quiet)
        base = collector.count()
        if rate is None:
            result = _throughput(s, sim, pub, collector, worker, links, seconds, base, quiet)
        else:
            result = _latency(sim, pub, collector, links, seconds, rate, base, quiet)
        result.update(
            worker_stage_mean_ms=_stage_means(metrics_port),
            model_bound_states_per_s=round(mb),
            model_version=version,
            links=links,
            seconds=seconds,
            batch_max=s.batch_max,
            partitions=s.partitions,
            worker_alive=worker.alive(),
            note="one worker process; broker, Redis, publisher and worker share this machine",
        )
        ok = True
        return result
    finally:
        if collector is not None:
            collector.stop_event.set()
        if worker is not None:
            worker.stop()
            if keep_logs:
                keep_logs.write_text(worker.log_tail(200_000))
        stack.down()
        remove_or_keep(tmp, ok)


def _throughput(s, sim, pub, collector, worker, links, seconds, base, quiet) -> dict[str, Any]:
    # Pre-fill more than one worker can drain in the window, so it never waits for input.
    steps = max(20, math.ceil(seconds * 25_000 / links))
    _log(f"throughput: publishing {steps * links:,} states as fast as possible", quiet)
    t0 = time.time()
    for _ in range(steps):
        pub.publish_payloads(sim.payloads())
    pub.flush()
    published_s = time.time() - t0
    start_ms = int(time.time() * 1000) + 1000  # skip the second after the pre-fill (publisher shares the CPUs)
    end_ms = start_ms + int(seconds * 1000)
    expected = base + steps * links
    wait_until(lambda: collector.count() >= expected or time.time() * 1000 > end_ms + 2000, seconds + 10)
    with collector.lock:
        ts = np.array(collector.broker_ms[base:], dtype=np.int64)
    win = ts[(ts >= start_ms) & (ts < end_ms)]
    drained = collector.count() >= expected
    span_ms = (min(end_ms, int(win.max()) + 1) - start_ms) if drained and len(win) else end_ms - start_ms
    rate = len(win) / (span_ms / 1000) if span_ms > 0 else 0.0
    _log(f"throughput: {len(win):,} decisions in {span_ms / 1000:.1f} s", quiet)
    return {
        "mode": "throughput",
        "states_per_s": round(rate),
        "decisions_in_window": int(len(win)),
        "window_s": round(span_ms / 1000, 2),
        "drained_before_window_end": drained,
        "prefill_states": steps * links,
        "prefill_publish_s": round(published_s, 2),
        "latency_ms": None,
    }


def _latency(sim, pub, collector, links, seconds, rate, base, quiet) -> dict[str, Any]:

    n_steps = max(1, math.ceil(seconds * rate / links))
    clock = ProduceClock(sim.link_ids, sim.step_index, chunk_size(links, rate))
    _log(f"latency: publishing {n_steps * links:,} states at {rate:,.0f}/s", quiet)
    done, took = publish_timed(sim, pub, rate, n_steps, clock)
    achieved = done / took
    pub.flush()
    expected = base + n_steps * links
    wait_until(lambda: collector.count() >= expected, 60)
    with collector.lock:
        ds = list(collector.decisions[base:])
        recv = list(collector.recv_ms[base:])
    lat, e2e, decided = [], [], []
    for d, rcv in zip(ds, recv):
        p = clock.produced_ms(d["seq"], d["link_id"])
        if p is not None:
            lat.append(d["decided_at_ms"] - p)
            e2e.append(rcv - p)
            decided.append(d["decided_at_ms"])
    lat_a, e2e_a = np.array(lat, dtype=np.float64), np.array(e2e, dtype=np.float64)
    # What the worker sustained: the phase's states over first produce -> last decision
    # (== the publish rate when it kept up, lower when a backlog built up).
    first_ms = min(clock.times.values()) if clock.times else 0
    span_s = (max(decided) - first_ms) / 1000 if decided else 0.0
    return {
        "mode": "latency",
        "rate_target": rate,
        "rate_published": round(achieved),
        "states_per_s": round(done / span_s) if span_s > 0 and len(lat) >= n_steps * links else None,
        "decisions": len(lat),
        "expected_decisions": n_steps * links,
        "latency_ms": {"p50": _pct(lat_a, 50), "p99": _pct(lat_a, 99), "max": _pct(lat_a, 100)},
        "latency_to_reader_ms": {"p50": _pct(e2e_a, 50), "p99": _pct(e2e_a, 99)},
        "latency_definition": "decided_at_ms - wall-clock time the state's chunk was produced (same machine)",
    }
