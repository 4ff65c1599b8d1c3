"""``bwp demo``: the whole pipeline on one machine with a live terminal view.

Starts (or reuses) the embedded stack, trains a quick model if none is registered, runs
one worker process and a paced simulator publisher (mixed fleet), shows the latest
decisions, then prints a summary and stops what it started - and only that.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simulator.generator import FleetSimulator
from simulator.pacing import chunk_size
from simulator.publisher import TelemetryPublisher
from stream.core.errors import StackError, Terminated
from stream.core.settings import Settings
from stream.metrics.scrape import scrape
from stream.ops.harness import (
    ProduceClock,
    WorkerSubprocess,
    ensure_model,
    publish_timed,
)
from stream.ops.stack import EmbeddedStack, free_port, free_ports

#: Deliberately invalid records the demo injects (every few seconds) so the dead-letter
#: path is visible; each is labelled as injected in the view and the summary.
INJECTED_BAD = (
    b'{"link_id":"injected-bad","seq":1,"ts_ms":1,"latency_ms":NaN,"bandwidth_mbps":1,"packet_loss":0,"reliability":1}',
    b'{"link_id":"injected-bad","seq":"one"}',
    b"not json at all (injected)",
    b'{"link_id":"injected-bad","seq":1,"ts_ms":1,"latency_ms":1,"bandwidth_mbps":1,"packet_loss":1.7,"reliability":1}',
)


@dataclass
class DemoState:
    """Everything the live view shows; written by the reader thread, read by the view."""

    latest: dict[str, dict] = field(default_factory=dict)
    bandwidth_now: dict[str, float] = field(default_factory=dict)
    decisions: int = 0
    dead_letters: int = 0
    dlq_reasons: dict[str, int] = field(default_factory=dict)
    published: int = 0
    injected: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    #: decisions per serving policy and per h = 1 forecast source (what served, not what was trained)
    served: dict[str, dict[str, int]] = field(default_factory=lambda: {"policy": {}, "forecast_source": {}})
    rates: deque = field(default_factory=lambda: deque(maxlen=6))
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Reader(threading.Thread):
    """Consumes decisions + dead letters of this demo run."""

    def __init__(self, s: Settings, state: DemoState, clock: Any, watched: set[str]) -> None:
        super().__init__(daemon=True)
        from confluent_kafka import Consumer, TopicPartition  # confluent-kafka: only code that talks to a broker

        self.c = Consumer(s.confluent_config(**{
            "group.id": f"bwp-demo-view-{uuid.uuid4().hex[:6]}", "enable.auto.commit": False,
            "auto.offset.reset": "earliest", "fetch.wait.max.ms": 50, "log.connection.close": False,
        }))  # fmt: skip
        tps = [TopicPartition(t, p, 0) for t in (s.decisions_topic, s.dlq_topic) for p in range(s.partitions)]
        self.c.assign(tps)
        self.s, self.state, self.clock, self.watched = s, state, clock, watched
        self.stop_event = threading.Event()

    def run(self) -> None:
        st = self.state
        while not self.stop_event.is_set():
            msgs = self.c.consume(1000, timeout=0.2)
            with st.lock:
                for m in msgs:
                    if m.error() is not None:
                        continue
                    if m.topic() == self.s.dlq_topic:
                        st.dead_letters += 1
                        code = dict(m.headers() or []).get("bwp-error-code", b"?").decode()
                        st.dlq_reasons[code] = st.dlq_reasons.get(code, 0) + 1
                        continue
                    d = json.loads(m.value())
                    st.decisions += 1
                    for key, counts in st.served.items():
                        v = d.get(key, "-")
                        counts[v] = counts.get(v, 0) + 1
                    p = self.clock.produced_ms(d["seq"], d["link_id"])
                    if p is not None:
                        st.latencies_ms.append(d["decided_at_ms"] - p)
                    if d["link_id"] in self.watched:
                        st.latest[d["link_id"]] = d
        self.c.close()


def _forecast_cell(d: dict[str, Any]) -> str:
    """The h = 1 median and its p10-p90 (schema v2+), or the point forecast of a v1 record."""
    q = (d.get("forecast") or {}).get("1")
    if not q:
        return f"{d['predicted_bandwidth_mbps']:,.1f}"
    return f"{q['p50']:,.1f} ({q['p10']:,.1f}-{q['p90']:,.1f})"


def _render(state: DemoState, watched: list[str], profiles: dict[str, str], elapsed: float, total: float, info: str):
    from rich.console import Group  # rich: only the demo draws
    from rich.table import Table  # rich: only the demo draws
    from rich.text import Text  # rich: only the demo draws

    t = Table(title=f"bwp demo - latest decision per link ({len(watched)} links of the fleet)", expand=False)
    # what a DWCP node reads: the h = 1 p10-p90, the safe bandwidth, and what served them
    for col, just in (("link", "left"), ("profile", "left"), ("seq", "right"), ("now Mbit/s", "right"),
                      ("p50 (p10-p90)", "right"), ("safe", "right"), ("alloc", "right"), ("alloc Mbit/s", "right"),
                      ("policy", "left"), ("source", "left")):  # fmt: skip
        t.add_column(col, justify=just, no_wrap=True)
    with state.lock:
        for lid in watched:
            d = state.latest.get(lid)
            now = state.bandwidth_now.get(lid)
            if d is None:
                row = [lid, profiles.get(lid, ""), "-", f"{now:,.1f}" if now is not None else "-", "window filling"]
                t.add_row(*row, "", "", "", "", "")
                continue
            t.add_row(
                lid, d.get("profile", ""), str(d["seq"]), f"{now:,.1f}" if now is not None else "-",
                _forecast_cell(d), f"{d['safe_bandwidth_mbps']:,.1f}" if "safe_bandwidth_mbps" in d else "-",
                f"{d['allocation_pct']}%", f"{d['allocated_bandwidth_mbps']:,.1f}",
                d.get("policy", "ddqn (v1)"), d.get("forecast_source", "lstm (v1)"),
            )  # fmt: skip
        lat = np.array(state.latencies_ms[-5000:], dtype=float)
        pub_rate = dec_rate = 0.0
        if len(state.rates) >= 2:
            (t0, p0, d0), (t1, p1, d1) = state.rates[0], state.rates[-1]
            if t1 > t0:
                pub_rate, dec_rate = (p1 - p0) / (t1 - t0), (d1 - d0) / (t1 - t0)
        lines = [
            f"{elapsed:5.0f}/{total:.0f} s   states published {state.published:,} ({pub_rate:,.0f}/s)   "
            f"decisions {state.decisions:,} ({dec_rate:,.0f}/s)",
            f"dead letters {state.dead_letters} (of {state.injected} deliberately INJECTED bad records: "
            f"{', '.join(f'{k} {v}' for k, v in sorted(state.dlq_reasons.items())) or 'none yet'})",
            "produce->decision latency (recent): "
            + (f"p50 {np.percentile(lat, 50):.0f} ms, p99 {np.percentile(lat, 99):.0f} ms" if len(lat) else "-"),
            info,
        ]
    return Group(t, Text("\n".join(lines)))


def _start_stack(settings: Settings, console: Any, run_id: str) -> tuple[EmbeddedStack, Any, bool, Settings]:
    """Reuse a running stack, start ours, or fall back to free ports; returns (stack, info,
    whether this demo started it, the settings it runs on)."""
    stack = EmbeddedStack(settings)
    was_running = all(v["running"] for v in stack.status().values())
    try:
        info = stack.up()
    except StackError as exc:
        console.print(
            f"[yellow]the usual ports are taken: {exc}[/]\n[yellow]starting a private stack on free ports instead.[/]"
        )
        kafka_port, redis_port = free_ports(2)
        settings = settings.model_copy(update={
            "state_dir": Path(settings.state_dir) / f"demo-{run_id}",
            "kafka_bootstrap": f"127.0.0.1:{kafka_port}", "redis_url": f"redis://127.0.0.1:{redis_port}/0",
        })  # fmt: skip
        stack = EmbeddedStack(settings)
        was_running = False
        info = stack.up()
    started_stack = bool(not was_running and (info.kafka_pid or info.redis_pid))
    console.print(
        f"kafka {info.kafka_bootstrap}, redis {info.redis_url}"
        + ("" if started_stack else " (already running, left running)")
    )
    return stack, info, started_stack, settings


def _run_settings(settings: Settings, info: Any, run_id: str) -> Settings:
    """Fresh topics, group and key namespace per run: a rerun never mixes with older data."""
    return settings.model_copy(update={
        "kafka_bootstrap": info.kafka_bootstrap, "redis_url": info.redis_url,
        "telemetry_topic": f"bwp.demo-{run_id}.telemetry", "decisions_topic": f"bwp.demo-{run_id}.decisions",
        "dlq_topic": f"bwp.demo-{run_id}.dlq", "consumer_group": f"bwp-demo-{run_id}",
        "key_prefix": f"bwp-demo-{run_id}", "window_ttl_s": 3600, "embedded": "never",
    })  # fmt: skip


def _drain(state: DemoState, links: int, timeout_s: float = 10.0) -> None:
    """Let the worker finish what is in flight, bounded by ``timeout_s``."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        with state.lock:
            done = state.decisions >= _expected(state.published, links)
        if done:
            return
        time.sleep(0.3)


def _live_view(
    console: Any,
    state: DemoState,
    watched: list[str],
    profiles: dict[str, str],
    seconds: float,
    worker: WorkerSubprocess,
    metrics_port: int,
    bad_pub: TelemetryPublisher,
) -> None:
    """Refresh the live view every second for ``seconds``, injecting a bad record every 5 s."""
    from rich.live import Live  # rich: only the demo draws

    t0 = time.monotonic()
    next_bad = t0 + 2.0
    with Live(_render(state, watched, profiles, 0, seconds, ""), console=console, refresh_per_second=2) as live:
        while (elapsed := time.monotonic() - t0) < seconds:
            if not worker.alive():
                raise StackError(f"the worker exited ({worker.proc.returncode}); log tail:\n{worker.log_tail()}")
            if time.monotonic() >= next_bad:
                bad_pub.publish_payloads([(b"injected-bad", INJECTED_BAD[state.injected % len(INJECTED_BAD)])])
                bad_pub.flush(5)
                with state.lock:
                    state.injected += 1
                next_bad += 5.0
            with state.lock:
                state.rates.append((time.monotonic(), state.published, state.decisions))
            live.update(_render(state, watched, profiles, elapsed, seconds, _worker_line(metrics_port)))
            time.sleep(1.0)


def _start_worker(s: Settings, console: Any, run_id: str, metrics_port: int) -> WorkerSubprocess:
    """A worker subprocess on the current model (a quick one is trained first if there is none)."""
    version = ensure_model(Path(s.model_dir))
    log_path = Path(s.state_dir) / f"demo-{run_id}-worker.log"
    worker = WorkerSubprocess(s, log_path, ["--metrics-port", str(metrics_port)]).start()
    pid = worker.proc.pid if worker.proc is not None else "?"
    console.print(f"worker pid {pid} (model {version}, log {log_path}, metrics :{metrics_port}/metrics)")
    console.print(
        f"follow the decisions elsewhere: bwp tail --decisions-topic {s.decisions_topic} --bootstrap {s.kafka_bootstrap}"
    )
    return worker


def run_demo(settings: Settings, seconds: float, links: int, rate: float | None) -> int:
    """Run the demo; returns the exit code."""
    from rich.console import Console  # rich: only the demo draws

    console = Console(stderr=False)
    rate = rate or 5.0 * links  # 5 steps/s: windows fill in 2 s
    run_id = time.strftime("%H%M%S") + "-" + uuid.uuid4().hex[:4]

    stack, info, started_stack, settings = _start_stack(settings, console, run_id)
    s = _run_settings(settings, info, run_id)
    stack.create_topics(
        s.kafka_bootstrap, (s.telemetry_topic, s.decisions_topic, s.dlq_topic), s.partitions, time.monotonic() + 30
    )

    worker = None
    publisher_thread = None
    reader = None
    publishers: list = []
    stop = threading.Event()
    try:
        metrics_port = free_port()
        worker = _start_worker(s, console, run_id, metrics_port)

        sim = FleetSimulator("mixed", links, seed=int(time.time()) % 10_000, step_ms=max(1, int(1000 * links / rate)))
        idx = sorted(set(np.linspace(0, links - 1, min(15, links)).astype(int).tolist()))
        watched = [sim.link_ids[i] for i in idx]
        profiles = {sim.link_ids[i]: ("datacenter" if sim.link_ids[i].startswith("dc") else "internet") for i in idx}
        state = DemoState()
        clock = ProduceClock(sim.link_ids, sim.step_index, chunk_size(links, rate))
        reader = _Reader(s, state, clock, set(watched))
        reader.start()
        # closed before the stack stops (finally); a client left open with undelivered
        # records (see TelemetryPublisher.close) must not log the broker's going away
        pub = TelemetryPublisher(s, **{"log.connection.close": False})
        bad_pub = TelemetryPublisher(s, **{"log.connection.close": False})
        publishers += [pub, bad_pub]

        def on_step(seq: int, payloads: list) -> None:
            vals = {i: json.loads(payloads[i][1])["bandwidth_mbps"] for i in idx}
            with state.lock:
                for i, v in vals.items():
                    state.bandwidth_now[sim.link_ids[i]] = v
                state.published = pub.produced

        def publish() -> None:
            publish_timed(sim, pub, rate, None, clock, stop, on_step)
            pub.flush(10)

        publisher_thread = threading.Thread(target=publish, daemon=True)
        # Wait for the worker to join its group before publishing, so the view starts live.
        console.print("waiting for the worker to start (loads the model, joins the consumer group)...")
        _wait_worker(worker, metrics_port, 120)
        publisher_thread.start()
        _live_view(console, state, watched, profiles, seconds, worker, metrics_port, bad_pub)
        stop.set()
        publisher_thread.join(15)
        with state.lock:
            state.published = pub.produced + bad_pub.produced  # incl. a last partial step and the injected
        _drain(state, links)
        _summary(console, state, links, worker_metrics(metrics_port))
        return 0
    except KeyboardInterrupt as exc:
        console.print("interrupted: stopping")
        return 143 if isinstance(exc, Terminated) else 130
    finally:
        stop.set()
        if reader is not None:
            reader.stop_event.set()
        if worker is not None:
            worker.stop()
        if publisher_thread is not None and publisher_thread.is_alive():
            publisher_thread.join(15)
        for p in publishers:  # before the broker stops: closed clients do not retry connecting
            p.close()
        if started_stack:
            stopped = stack.down()
            console.print(f"stopped: worker, publisher, {', '.join(stopped) or 'stack'} (started by this demo)")
        else:
            console.print("stopped: worker, publisher (the stack was already running and is left running)")


def _expected(published: int, links: int) -> int:
    steps = published // links
    return max(0, steps - 9) * links


def worker_metrics(port: int) -> dict[str, float]:
    """The worker's counters (and consumer lag) from its /metrics endpoint, summed over labels
    ({} when unreachable)."""
    samples = scrape(port, timeout_s=1.0)
    out: dict[str, float] = {}
    for (name, _), value in (samples or {}).items():
        if name.endswith("_total") or name.startswith("bwp_consumer_lag"):
            out[name] = out.get(name, 0.0) + value
    return out


def _worker_line(port: int) -> str:
    m = worker_metrics(port)
    if not m:
        return "worker metrics: (not reachable yet)"
    return (
        f"worker: consumed {m.get('bwp_records_consumed_total', 0):,.0f}, decisions {m.get('bwp_decisions_total', 0):,.0f}, "
        f"dropped duplicates/stale {m.get('bwp_records_dropped_total', 0):,.0f}, "
        f"redis errors {m.get('bwp_redis_errors_total', 0):,.0f}, lag {m.get('bwp_consumer_lag_records', 0):,.0f}"
    )


def _wait_worker(worker: Any, port: int, timeout_s: float) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if not worker.alive():
            raise StackError(f"the worker exited ({worker.proc.returncode}); log tail:\n{worker.log_tail()}")
        # the lag gauge appears once partitions are assigned: the worker is consuming
        if "bwp_consumer_lag_records" in worker_metrics(port):
            return
        time.sleep(0.3)
    raise StackError(f"the worker did not come up within {timeout_s:.0f} s; log tail:\n{worker.log_tail()}")


def _summary(console: Any, state: DemoState, links: int, m: dict[str, float]) -> None:
    with state.lock:
        lat = np.array(state.latencies_ms, dtype=float)
        console.print("\n[bold]summary[/]")
        console.print(f"  links {links}, records published {state.published:,}, records consumed by the worker "
                      f"{m.get('bwp_records_consumed_total', float('nan')):,.0f}")  # fmt: skip
        console.print(f"  decisions {state.decisions:,} (expected about {_expected(state.published, links):,}: "
                      "one per state once a link has 10)")  # fmt: skip
        console.print(f"  dead letters {state.dead_letters} (the demo injected {state.injected} bad records on purpose) "
                      f"{state.dlq_reasons}")  # fmt: skip
        for key, counts in state.served.items():
            total = sum(counts.values())
            if total:
                shares = ", ".join(f"{k} {v / total:.0%}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
                console.print(f"  what served ({key}): {shares}")
        if len(lat):
            console.print(f"  produce->decision latency p50 {np.percentile(lat, 50):.0f} ms, p99 {np.percentile(lat, 99):.0f} ms "
                          f"over {len(lat):,} decisions (same machine clock)")  # fmt: skip
