"""stream/metrics/_prometheus_compat.py: the histogram internals observe_many updates are the
reviewed ones; an untested prometheus-client falls back to the public observe() loop."""

from __future__ import annotations

import logging
import math

import pytest
from prometheus_client import CollectorRegistry, Histogram

from stream.core.compat import spec
from stream.metrics import _prometheus_compat as compat
from tests.helpers.compat import assert_reviewed, fake_version, pyproject_spec

VALUES = [0.0, 0.005, 0.01, 0.03, 0.2, 61.0, -1.0, math.inf, math.nan, 0.1, 0.1]


@pytest.fixture(autouse=True)
def _decide_again():
    # each test may force the fallback; the next one (and other modules) get the real decision
    yield
    compat.check_version()


def _samples(h: Histogram) -> dict:
    return {(s.name, s.labels.get("le")): s.value for s in h.collect()[0].samples if not s.name.endswith("_created")}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        (math.isnan(a[k]) and math.isnan(b[k])) or a[k] == pytest.approx(b[k], rel=1e-12) for k in a
    )


def _pair(labels: bool) -> tuple:
    kw = {"buckets": (0.005, 0.01, 0.1, 60.0), "registry": CollectorRegistry()}
    if labels:
        a = Histogram("h", "h", ["x"], **kw).labels("1")
        b = Histogram("h", "h", ["x"], buckets=kw["buckets"], registry=CollectorRegistry()).labels("1")
    else:
        a, b = Histogram("h", "h", **kw), Histogram("h", "h", buckets=kw["buckets"], registry=CollectorRegistry())
    return a, b


def test_upstream_code_is_the_reviewed_code():
    assert_reviewed(compat, "stream/metrics/_prometheus_compat.py")


@pytest.mark.parametrize("labels", [False, True])
def test_private_attributes_exist_on_real_histograms(labels):
    h, _ = _pair(labels)
    missing = [a for a in compat.HISTOGRAM_ATTRS if not hasattr(h, a)]
    assert not missing, f"Histogram lacks {missing}: review stream/metrics/_prometheus_compat.py"
    assert list(h._upper_bounds) == [0.005, 0.01, 0.1, 60.0, math.inf]
    assert len(h._buckets) == len(h._upper_bounds) and all(hasattr(b, "inc") for b in h._buckets)
    assert hasattr(h._sum, "inc")


def test_installed_version_uses_the_bucket_counters(monkeypatch):
    assert compat.check_version() is True
    calls = []
    h, _ = _pair(False)
    monkeypatch.setattr(h, "observe", lambda v: calls.append(v))  # must not be used
    compat.observe_many(h, VALUES)
    assert calls == []


@pytest.mark.parametrize("labels", [False, True])
def test_bulk_update_equals_the_observe_loop(labels):
    a, b = _pair(labels)
    for v in VALUES:
        a.observe(v)
    compat.observe_many(b, VALUES)
    assert _same(_samples(a), _samples(b))


@pytest.mark.parametrize("version", ["0.27.0", "0.19.0", "1.0.0", None])
def test_untested_version_falls_back_to_public_observe(monkeypatch, caplog, version):
    fake_version(monkeypatch, "prometheus-client", version)
    with caplog.at_level(logging.WARNING, logger=compat.__name__):
        assert compat.check_version() is False
    msg = caplog.records[0].getMessage()
    assert "prometheus-client" in msg and (version or "not installed") in msg and spec(compat.TESTED) in msg

    def no_private(*_a, **_k):
        raise AssertionError("the private path ran on an untested version")

    monkeypatch.setattr(compat, "_observe_fast", no_private)
    a, b = _pair(True)
    for v in VALUES:
        a.observe(v)
    compat.observe_many(b, VALUES)
    assert _same(_samples(a), _samples(b))


def test_a_misbehaving_probe_falls_back(monkeypatch):
    monkeypatch.setattr(compat, "_probe_ok", lambda: False)
    assert compat.check_version() is False


def test_worker_metrics_decide_when_created(monkeypatch):
    from stream.metrics.worker import WorkerMetrics

    fake_version(monkeypatch, "prometheus-client", "0.27.0")
    WorkerMetrics.create(CollectorRegistry())
    assert compat._fast is False


def test_pyproject_bound_is_the_tested_range():
    assert pyproject_spec("prometheus-client") == spec(compat.TESTED)
