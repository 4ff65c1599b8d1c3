"""The embedded stack: real tansu + valkey processes on loopback."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from confluent_kafka.admin import AdminClient

from stream.core.errors import StackError
from stream.core.settings import load_settings
from stream.ops.stack import EmbeddedStack, free_port

pytestmark = pytest.mark.integration


def _settings(tmp_path: Path, kafka_port: int, redis_port: int, **kw):
    return load_settings(
        state_dir=tmp_path / "state",
        kafka_bootstrap=f"127.0.0.1:{kafka_port}",
        redis_url=f"redis://127.0.0.1:{redis_port}/0",
        telemetry_topic="s.telemetry",
        decisions_topic="s.decisions",
        dlq_topic="s.dlq",
        **kw,
    )


def test_up_is_idempotent_creates_topics_and_down_stops(tmp_path: Path) -> None:
    s = _settings(tmp_path, free_port(), free_port())
    stack = EmbeddedStack(s)
    try:
        first = stack.up(partitions=3)
        again = stack.up(partitions=3)
        assert (first.kafka_pid, first.redis_pid) == (again.kafka_pid, again.redis_pid)
        md = AdminClient({"bootstrap.servers": first.kafka_bootstrap}).list_topics(timeout=10)
        assert {t: len(md.topics[t].partitions) for t in ("s.telemetry", "s.decisions", "s.dlq")} == {
            "s.telemetry": 3,
            "s.decisions": 3,
            "s.dlq": 3,
        }
        assert redis.Redis.from_url(first.redis_url).ping()
        status = stack.status()
        assert status["kafka"]["running"] and status["redis"]["running"]
        assert (tmp_path / "state" / "kafka.log").exists()
    finally:
        stopped = stack.down()
    assert sorted(stopped) == ["kafka", "redis"]
    assert not stack.status()["kafka"]["running"]
    assert stack.down() == []


def test_port_taken_by_someone_else_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        stack = EmbeddedStack(_settings(tmp_path, port, free_port()))
        with pytest.raises(StackError, match=rf"port {port} on 127.0.0.1 is already in use.*--kafka-port"):
            stack.up()
        stack.down()


def test_external_settings_start_nothing(tmp_path: Path) -> None:
    s = load_settings(
        state_dir=tmp_path,
        kafka_bootstrap="kafka.example.invalid:9092",
        redis_url="redis://redis.example.invalid:6379/0",
    )
    assert not s.kafka_is_local and not s.redis_is_local
    with pytest.raises(StackError):  # nothing started; it only tries to reach the external servers
        EmbeddedStack(s).up(timeout_s=1)
    assert not (tmp_path / "kafka.pid").exists() and not (tmp_path / "redis.pid").exists()


def test_cli_stack_up_status_down(tmp_path: Path) -> None:
    kp, rp = free_port(), free_port()
    base = [sys.executable, "-m", "stream.cli", "stack"]
    flags = ["--state-dir", str(tmp_path), "--bootstrap", f"127.0.0.1:{kp}", "--redis-url", f"redis://127.0.0.1:{rp}/0"]
    up = subprocess.run(base + ["up", *flags], capture_output=True, text=True, timeout=60)
    try:
        assert up.returncode == 0, up.stderr
        assert f"127.0.0.1:{kp}" in up.stdout and f"redis://127.0.0.1:{rp}/0" in up.stdout
        st = subprocess.run(base + ["status", *flags], capture_output=True, text=True, timeout=30)
        assert st.returncode == 0 and '"running": true' in st.stdout
    finally:
        down = subprocess.run(base + ["down", "--state-dir", str(tmp_path)], capture_output=True, text=True, timeout=30)
    assert "kafka" in down.stdout and "redis" in down.stdout


def test_free_ports_are_distinct():
    from stream.ops.stack import free_ports

    for _ in range(20):
        ports = free_ports(8)
        assert len(set(ports)) == 8 and all(p > 0 for p in ports)
