"""stream/pipeline/_faust_compat.py: the faust-streaming internals bwp copies, wraps and reads
are those it was written against, and an untested faust-streaming is refused."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from stream.core.compat import installed_version, spec
from stream.core.errors import ConfigError
from stream.pipeline import _faust_compat as compat
from tests.helpers.compat import assert_reviewed, fake_version, pyproject_spec


def test_upstream_code_is_the_reviewed_code():
    # Fails on an upgrade that touches the copied fetch loop or the wrapped consumer factory.
    assert_reviewed(compat, "stream/pipeline/_faust_compat.py")


def test_fingerprints_hash_the_originals_once_patched():
    compat._patch_drain()
    from faust.transport import consumer as fc
    from faust.transport.drivers import aiokafka as fa

    assert fc.Consumer._drain_messages is compat._drain_messages
    # the worker's consumer class inherits the patched loop (no subclass overrides it)
    assert fa.Consumer._drain_messages is compat._drain_messages
    assert compat.upstream(compat.DRAIN) is not compat._drain_messages
    assert compat.fingerprints()[compat.DRAIN] == compat.UPSTREAM_SHA256[compat.TESTED][compat.DRAIN]


def test_installed_version_is_tested():
    assert compat.check_version() == installed_version("faust-streaming")


@pytest.mark.parametrize("version", ["0.16.0", "0.15.1", "1.0.0", "0.16.0rc1", None])
def test_untested_version_is_refused(monkeypatch, version):
    fake_version(monkeypatch, "faust-streaming", version)
    with pytest.raises(ConfigError) as err:
        compat.check_version()
    msg = str(err.value)
    assert "faust-streaming" in msg and spec(compat.TESTED) in msg and "pip install" in msg
    assert (version or "not installed") in msg


def test_the_patches_refuse_an_untested_version(monkeypatch):
    # also once patched: every app built checks again
    fake_version(monkeypatch, "faust-streaming", "0.16.0")
    with pytest.raises(ConfigError):
        compat._patch_drain()
    with pytest.raises(ConfigError):
        compat._patch_fetch_wait(50)


def test_make_app_refuses_an_untested_version(monkeypatch, tmp_path):
    from stream.core.settings import load_settings
    from stream.pipeline.app import make_app

    fake_version(monkeypatch, "faust-streaming", "0.16.0")
    with pytest.raises(ConfigError, match="faust-streaming 0.16.0"):
        make_app(load_settings(state_dir=tmp_path, kafka_bootstrap="127.0.0.1:1"))


def _offline_app() -> Any:
    import faust

    return faust.App("bwp-compat-test", broker="kafka://127.0.0.1:1", web_enabled=False, autodiscover=False)


def test_private_attributes_exist_on_real_instances():
    async def go() -> None:
        app = _offline_app()
        consumer = app.consumer
        missing = [a for a in compat.CONSUMER_ATTRS if not hasattr(consumer, a)]
        assert not missing, f"faust Consumer lacks {missing}: review stream/pipeline/_faust_compat.py"
        assert callable(consumer._add_gap) and consumer._stopped.is_set() is False
        assert hasattr(app._fetcher, "_stopped")  # the loop's other stop flag (mode's Service)
        assert isinstance(consumer._n_acked, int)

    asyncio.run(go())


def test_committed_offset_reads_faust_bookkeeping_without_adding_keys():
    from faust.types import TP

    async def go() -> None:
        consumer = _offline_app().consumer
        tp = TP("t", 0)
        assert compat.committed_offset(consumer, tp) is None
        assert tp not in consumer._committed_offset
        consumer._committed_offset[tp] = 41
        assert compat.committed_offset(consumer, tp) == 41

    asyncio.run(go())


def test_fetch_wait_reaches_the_consumer_faust_builds():
    from faust.transport.drivers import aiokafka as fa

    before = getattr(fa.AIOKafkaConsumerThread, "_bwp_fetch_wait_ms", None)

    async def go() -> int:
        app = _offline_app()
        kc = app.consumer._thread._create_worker_consumer(app.transport)
        try:
            return kc._fetch_max_wait_ms
        finally:
            await kc.stop()

    try:
        compat._patch_fetch_wait(77)
        assert asyncio.run(go()) == 77  # Faust's own value is 1500
    finally:
        if before is not None:
            fa.AIOKafkaConsumerThread._bwp_fetch_wait_ms = before


def test_pyproject_bound_is_the_tested_range():
    assert pyproject_spec("faust-streaming") == spec(compat.TESTED)
