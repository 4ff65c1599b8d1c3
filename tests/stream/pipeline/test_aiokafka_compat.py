"""stream/pipeline/_aiokafka_compat.py: the aiokafka attribute bwp writes is the one
``AIOKafkaConsumer.start()`` hands to its Fetcher, and an untested aiokafka is refused."""

from __future__ import annotations

import asyncio
import inspect

import pytest

from stream.core.compat import installed_version, spec
from stream.core.errors import ConfigError
from stream.pipeline import _aiokafka_compat as compat
from stream.pipeline import _faust_compat
from tests.helpers.compat import assert_reviewed, fake_version, pyproject_spec


def test_upstream_code_is_the_reviewed_code():
    assert_reviewed(compat, "stream/pipeline/_aiokafka_compat.py")


def test_start_hands_the_private_attribute_to_the_fetcher():
    from aiokafka import AIOKafkaConsumer

    assert f"fetch_max_wait_ms=self.{compat.FETCH_WAIT_ATTR}" in inspect.getsource(AIOKafkaConsumer.start)


def test_the_private_attribute_exists_on_a_real_consumer():
    from aiokafka import AIOKafkaConsumer

    async def go() -> None:
        consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1", fetch_max_wait_ms=1234)
        try:
            assert getattr(consumer, compat.FETCH_WAIT_ATTR) == 1234
            compat.set_fetch_max_wait_ms(consumer, 50)
            assert getattr(consumer, compat.FETCH_WAIT_ATTR) == 50
        finally:
            await consumer.stop()

    asyncio.run(go())


def test_a_consumer_without_the_attribute_is_refused():
    with pytest.raises(ConfigError, match=compat.FETCH_WAIT_ATTR):
        compat.set_fetch_max_wait_ms(object(), 50)


def test_installed_version_is_tested():
    assert compat.check_version() == installed_version("aiokafka")


@pytest.mark.parametrize("version", ["0.15.0", "0.9.0", "1.0.0", None])
def test_untested_version_is_refused(monkeypatch, version):
    fake_version(monkeypatch, "aiokafka", version)
    with pytest.raises(ConfigError) as err:
        compat.check_version()
    msg = str(err.value)
    assert "aiokafka" in msg and spec(compat.TESTED) in msg and "pip install" in msg
    assert (version or "not installed") in msg


def test_the_fetch_wait_patch_refuses_an_untested_aiokafka(monkeypatch):
    fake_version(monkeypatch, "aiokafka", "0.15.0")
    with pytest.raises(ConfigError, match="aiokafka 0.15.0"):
        _faust_compat._patch_fetch_wait(50)


def test_pyproject_bound_is_the_tested_range():
    assert pyproject_spec("aiokafka") == spec(compat.TESTED)
