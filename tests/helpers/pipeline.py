"""Helpers for the pipeline tests: a deterministic TEST-ONLY stand-in predictor, a
synthetic record maker, a worker subprocess and a time-bounded topic reader.

``LastValuePredictor`` is not a model: it echoes the last bandwidth of each window and
always picks action 4, so that pipeline tests check plumbing independently of training.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stream.core.records import Telemetry
from stream.core.settings import Settings
from stream.ops.harness import WorkerSubprocess

STAND_IN = "tests.helpers.pipeline:LastValuePredictor"
QUANTILE_STAND_IN = "tests.helpers.pipeline:QuantileStandIn"


@dataclass
class StandInPrediction:
    bandwidth_mbps: np.ndarray
    action: np.ndarray
    reference_bandwidth_mbps: np.ndarray


class LastValuePredictor:
    """TEST-ONLY stand-in predictor: forecast = last bandwidth, action = 4 (50 %)."""

    version = "test-last-value"

    def __init__(self) -> None:
        self.calls: list[int] = []

    def predict(self, windows: np.ndarray, profiles=None) -> StandInPrediction:
        assert windows.ndim == 3 and windows.shape[1:] == (10, 4), windows.shape
        self.calls.append(len(windows))
        bw = windows[:, -1, 1].copy()
        return StandInPrediction(bw, np.full(len(windows), 4, dtype=np.int64), windows[:, :, 1].max(axis=1))


@dataclass
class QuantilePrediction:
    bandwidth_mbps: np.ndarray
    action: np.ndarray
    reference_bandwidth_mbps: np.ndarray
    wire_quantiles: np.ndarray
    horizons: tuple[int, ...]
    forecast_source: np.ndarray
    policy: np.ndarray


class QuantileStandIn:
    """TEST-ONLY stand-in quantile model: around the last value x, p10 = 0.8 x, p50 = x,
    p90 = 1.25 x, for h = 1, 10, 60."""

    version = "quantile-stand-in"

    def __init__(self) -> None:
        self.profiles_seen: list = []

    def predict(self, windows: np.ndarray, profiles=None) -> QuantilePrediction:
        self.profiles_seen.append(list(profiles or []))
        last = np.maximum(windows[:, -1, 1], 0.0)
        q = np.stack([last * 0.8, last, last * 1.25], axis=1)[:, None, :].repeat(3, axis=1)  # (N, 3, 3)
        n = len(windows)
        return QuantilePrediction(
            last, np.full(n, 4), windows[:, :, 1].max(axis=1), q, (1, 10, 60),
            np.array(["ewma"] * n, dtype=object), np.array(["ewma_rule"] * n, dtype=object),
        )  # fmt: skip


def make_record(link: int | str, seq: int, profile: str | None = "datacenter") -> Telemetry:
    """A deterministic valid state; bandwidth encodes (link, seq) so windows are checkable."""
    link_id = link if isinstance(link, str) else f"lk-{link:04d}"
    return Telemetry(
        link_id=link_id,
        seq=seq,
        ts_ms=int(time.time() * 1000),
        latency_ms=1.0 + seq % 7,
        bandwidth_mbps=float(seq) + 0.5,
        packet_loss=0.001 * (seq % 5),
        reliability=0.99,
        profile=profile,
    )


def grouped_state(link: str, seq: int, bw: float, lat: float = 10.0, loss: float = 0.0, group: str = "g") -> Telemetry:
    """A state of a link in route group ``group`` (ts_ms = 1000 + seq)."""
    return Telemetry(link, seq, 1_000 + seq, lat, bw, loss, 1.0, "internet", route_group=group)


def route_entries(states: list[Telemetry], now_ms: int) -> list:
    """Route-store entries as the worker makes them: decisions whose h=1 forecast is the state's bandwidth."""
    from stream.core.records import Decision
    from stream.pipeline.routes import entries

    ds = [Decision.make(r.link_id, r.seq, r.ts_ms, r.bandwidth_mbps, 4, 100.0, "v", now_ms) for r in states]
    return entries(states, ds, now_ms)


def fleet(links: int, steps: int, start_seq: int = 0) -> list[Telemetry]:
    """``links`` x ``steps`` states, step-major (every link's seq s before any seq s+1)."""
    return [make_record(k, s) for s in range(start_seq, start_seq + steps) for k in range(links)]


def produce(settings: Settings, items: Iterable[Telemetry | tuple[bytes | None, bytes | None]]) -> int:
    """Publish records (or raw ``(key, value)`` pairs) to the telemetry topic; waits for acks."""
    from confluent_kafka import Producer

    p = Producer(settings.confluent_config(**{"linger.ms": 5, "acks": "all"}))
    n = 0
    for it in items:
        if isinstance(it, Telemetry):
            key, value = it.link_id.encode(), it.to_bytes()
        else:
            key, value = it
        while True:
            try:
                p.produce(settings.telemetry_topic, value=value, key=key)
                break
            except BufferError:
                p.poll(0.05)
        n += 1
    left = p.flush(30)
    assert left == 0, f"{left} test records not acknowledged"
    return n


class TopicReader:
    """Reads a topic from the beginning with a private group (assign, no group join)."""

    def __init__(self, settings: Settings, topic: str, partitions: int = 4) -> None:
        from confluent_kafka import Consumer, TopicPartition

        self.c = Consumer(
            settings.confluent_config(
                **{"group.id": f"reader-{os.getpid()}-{time.monotonic_ns()}", "enable.auto.commit": False,
                   "auto.offset.reset": "earliest"}
            )
        )  # fmt: skip
        self.c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        self.messages: list = []

    def poll_until(self, pred, timeout_s: float) -> list:
        """Collect messages until ``pred(messages)`` holds or the deadline passes."""
        end = time.monotonic() + timeout_s
        while not pred(self.messages) and time.monotonic() < end:
            for m in self.c.consume(500, timeout=0.2):
                if m.error() is None:
                    self.messages.append(m)
        return self.messages

    def drain(self, quiet_s: float = 1.0) -> list:
        """Keep reading until nothing new arrives for ``quiet_s``."""
        last = time.monotonic()
        while time.monotonic() - last < quiet_s:
            got = [m for m in self.c.consume(500, timeout=0.2) if m.error() is None]
            if got:
                self.messages.extend(got)
                last = time.monotonic()
        return self.messages

    def close(self) -> None:
        self.c.close()


class WorkerProcess(WorkerSubprocess):
    """The ops harness's worker subprocess, with the tests' defaults: a stand-in model (no
    TensorFlow) unless ``predictor`` is None, and /metrics on a free port unless ``extra`` says."""

    def __init__(
        self, settings: Settings, log_path: Path, predictor: str | None = STAND_IN, extra: Iterable[str] = ()
    ) -> None:
        args = list(extra) + (["--predictor-factory", predictor] if predictor else [])
        super().__init__(settings.model_copy(update={"metrics_port": 0}), log_path, args)


def decision_keys(messages: Iterable) -> Iterator[tuple[str, int]]:
    import json

    for m in messages:
        d = json.loads(m.value())
        yield d["link_id"], d["seq"]
