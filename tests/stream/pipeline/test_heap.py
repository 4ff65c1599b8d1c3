"""HeapGuard: collector pauses are timed per generation; freeze hides objects from the
collector until refreeze (pure logic, in-process)."""

from __future__ import annotations

import gc
import weakref

import pytest
from prometheus_client import CollectorRegistry

from stream.metrics.worker import WorkerMetrics
from stream.pipeline.heap import HeapGuard


class Cycle:
    """Garbage only the cyclic collector can free."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture()
def guard():
    m = WorkerMetrics.create(CollectorRegistry())
    g = HeapGuard(m.gc_pause_seconds)
    yield g, m
    g.close()
    gc.unfreeze()


def _count(m: WorkerMetrics, generation: str) -> float:
    return m.registry.get_sample_value("bwp_gc_pause_seconds_count", {"generation": generation}) or 0.0


def test_every_collection_is_timed_under_its_generation(guard) -> None:
    g, m = guard
    before = {gen: _count(m, gen) for gen in "012"}
    gc.collect(0)
    gc.collect(2)
    assert _count(m, "0") >= before["0"] + 1
    assert _count(m, "2") >= before["2"] + 1
    assert m.registry.get_sample_value("bwp_gc_pause_seconds_sum", {"generation": "2"}) > 0.0


def test_close_stops_the_timing(guard) -> None:
    g, m = guard
    g.close()
    n = _count(m, "2")
    gc.collect()
    assert _count(m, "2") == n


def test_frozen_garbage_waits_for_refreeze(guard) -> None:
    g, _ = guard
    obj = Cycle()
    ref = weakref.ref(obj)
    assert g.freeze() == gc.get_freeze_count() > 0
    del obj
    gc.collect()
    assert ref() is not None, "a frozen cycle must survive collections"
    g.refreeze()
    assert ref() is None, "refreeze must collect what became garbage while frozen"
    assert gc.get_freeze_count() > 0


def test_unfrozen_garbage_is_collected_as_usual(guard) -> None:
    obj = Cycle()
    ref = weakref.ref(obj)
    del obj
    gc.collect()
    assert ref() is None


def test_a_disabled_guard_times_pauses_but_never_freezes() -> None:
    m = WorkerMetrics.create(CollectorRegistry())
    g = HeapGuard(m.gc_pause_seconds, enabled=False)
    try:
        before = gc.get_freeze_count()
        assert g.freeze() == 0 and g.refreeze() == 0
        assert gc.get_freeze_count() == before
        gc.collect()
        assert _count(m, "2") >= 1
    finally:
        g.close()
