"""Horizontal scaling: two workers share one consumer group; one is killed mid-stream.

The telemetry topic has 4 partitions, keyed by link. Both workers get partitions and
produce decisions; after SIGKILL the survivor takes over the dead worker's partitions.
Windows live in Redis, so the moved links continue where they were: every state that
completes a window still gets a decision (at-least-once: a decision published just before
the kill may appear twice, never zero times, and both copies are identical).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from stream.core.records import WINDOW
from stream.metrics.scrape import scrape, total
from stream.ops.stack import free_port
from tests.helpers.pipeline import TopicReader, WorkerProcess, fleet, produce

pytestmark = pytest.mark.integration

LINKS = 24


def _consumed(port: int) -> float | None:
    """``bwp_records_consumed_total`` of the worker serving /metrics on ``port`` (None: not up)."""
    samples = scrape(port, timeout_s=2.0)
    return None if samples is None else total(samples, "bwp_records_consumed_total")


def _wait(pred, timeout_s: float, step_s: float = 0.2) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step_s)
    return pred()


def test_two_workers_one_killed_every_window_still_decided(bwp_settings, tmp_path: Path) -> None:
    ports = [free_port(), free_port()]
    workers = [
        WorkerProcess(bwp_settings, tmp_path / f"worker{i}.log", extra=["--metrics-port", str(p)])
        for i, p in enumerate(ports)
    ]
    reader = TopicReader(bwp_settings, bwp_settings.decisions_topic)
    try:
        for w in workers:
            w.start()
        assert _wait(lambda: all(_consumed(p) is not None for p in ports), 60), [w.log_tail() for w in workers]

        # Phase 1: stream steps until both workers have consumed records (both hold
        # partitions once the group has rebalanced), then a few more.
        step = 0
        deadline = time.monotonic() + 45
        extra = 0
        while extra < 3:
            produce(bwp_settings, fleet(LINKS, 1, start_seq=step))
            step += 1
            time.sleep(0.25)
            if step >= WINDOW and all((_consumed(p) or 0) > 0 for p in ports):
                extra += 1
            assert time.monotonic() < deadline, (
                f"both workers never got work: consumed {[_consumed(p) for p in ports]}\n"
                + "\n".join(w.log_tail(1500) for w in workers)
            )
        split = [_consumed(p) for p in ports]

        # Phase 2: kill worker 0 (no shutdown code runs), keep streaming.
        workers[0].kill()
        for _ in range(12):
            produce(bwp_settings, fleet(LINKS, 1, start_seq=step))
            step += 1
            time.sleep(0.1)

        expected = {(f"lk-{k:04d}", s) for k in range(LINKS) for s in range(WINDOW - 1, step)}
        got: dict[tuple[str, int], list[dict]] = {}

        def complete() -> bool:
            got.clear()
            for m in reader.poll_until(lambda _: False, 0.5):
                d = json.loads(m.value())
                got.setdefault((d["link_id"], d["seq"]), []).append(d)
            return expected <= set(got)

        # The survivor takes the dead worker's partitions after the session timeout.
        _wait(complete, bwp_settings.broker_session_timeout_s + 50, step_s=0)
        missing = expected - set(got)
        assert not missing, (
            f"{len(missing)} states never decided, e.g. {sorted(missing)[:5]}; split before kill {split}\n"
            + workers[1].log_tail(2000)
        )
        assert set(got) == expected, f"unexpected decisions: {sorted(set(got) - expected)[:5]}"
        assert workers[1].alive()
        # The survivor did the dead worker's share after the kill.
        assert (_consumed(ports[1]) or 0) > split[1]

        # Redelivered states got the same decision again: windows came from Redis intact.
        for key, ds in got.items():
            # LastValuePredictor: forecast = newest bandwidth in the window = seq + 0.5, and
            # the reference = max over the window = the same; a window rebuilt from
            # scratch would have no decision for the first WINDOW - 1 states after the move.
            assert {d["predicted_bandwidth_mbps"] for d in ds} == {key[1] + 0.5}, (key, ds)
        dup = sum(len(ds) - 1 for ds in got.values())
        print(f"\nscaling: {len(expected)} states decided, split before kill {split}, {dup} redelivered duplicates")
    finally:
        reader.close()
        for w in workers:
            w.stop()
