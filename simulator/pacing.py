"""Pacing for publishers: spread a simulator's steps over time at a target rate.

:func:`paced_chunks` is the one paced loop: ``bwp simulate`` (to Kafka or a file), the demo and
``bwp bench pipeline`` all consume it, each doing its own thing with a chunk.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any


class Pacer:
    """Sleeps so that ``n`` items are done no earlier than ``n / rate`` s after the start.

    ``rate=None`` never sleeps. Waiting on ``stop_event`` keeps Ctrl-C / stop responsive.
    """

    def __init__(self, rate: float | None, stop_event: threading.Event | None = None) -> None:
        if rate is not None and rate <= 0:
            raise ValueError(f"rate must be > 0 records/s, got {rate}")
        self.rate = rate
        self.stop_event = stop_event
        self.t0 = time.perf_counter()

    def wait(self, done: int) -> bool:
        """Block until ``done`` items are due; False when the stop event was set."""
        if self.stop_event is not None and self.stop_event.is_set():
            return False
        if self.rate is None:
            return True
        delay = self.t0 + done / self.rate - time.perf_counter()
        if delay > 0:
            if self.stop_event is not None:
                return not self.stop_event.wait(delay)
            time.sleep(delay)
        return True


def chunk_size(links: int, rate: float | None) -> int:
    """Records per paced chunk: about 10 ms of records (a whole step when unpaced)."""
    if rate is None:
        return links
    return max(1, min(links, int(rate / 100)))


@dataclass
class PublishStats:
    """What a paced run did: records produced, wall seconds, steps completed, stop reason."""

    records: int = 0
    steps: int = 0
    seconds: float = 0.0
    stopped: bool = False

    @property
    def rate(self) -> float:
        """Records per second over the run."""
        return self.records / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class Chunk:
    """About 10 ms of one step's records: ``payloads`` are (key, value) pairs."""

    step: int  # the simulator's step index (= each record's seq)
    index: int  # the chunk's position within the step
    payloads: list[tuple[bytes, bytes]]


def paced_chunks(
    sim: Any,
    steps: int | None,
    rate: float | None,
    stats: PublishStats,
    stop_event: threading.Event | None = None,
    progress: Callable[[PublishStats], None] | None = None,
    progress_every_s: float = 2.0,
    on_step: Callable[[int, list[tuple[bytes, bytes]]], None] | None = None,
    chunk: int | None = None,
) -> Iterator[Chunk]:
    """Yield ``steps`` steps of ``sim`` (a FleetSimulator; None = until ``stop_event``) in chunks
    of about 10 ms of records, each when it is due at ``rate`` records/s (None = at once).

    ``stats`` is updated as chunks are consumed (records, steps, seconds, stopped);
    ``progress(stats)`` runs every ``progress_every_s``; ``on_step(step, payloads)`` after each step.
    ``chunk`` (records per chunk) defaults to :func:`chunk_size`.
    """
    pacer = Pacer(rate, stop_event)
    chunk = chunk or chunk_size(sim.links, rate)
    next_report = pacer.t0 + progress_every_s
    while steps is None or stats.steps < steps:
        step = sim.step_index
        payloads = sim.payloads()
        for ci, i in enumerate(range(0, len(payloads), chunk)):
            if not pacer.wait(stats.records):
                stats.stopped = True
                stats.seconds = time.perf_counter() - pacer.t0
                return
            part = payloads[i : i + chunk]
            yield Chunk(step, ci, part)
            stats.records += len(part)
        if on_step is not None:
            on_step(step, payloads)
        stats.steps += 1
        now = time.perf_counter()
        stats.seconds = now - pacer.t0
        if progress is not None and now >= next_report:
            progress(stats)
            next_report = now + progress_every_s
    stats.seconds = time.perf_counter() - pacer.t0
