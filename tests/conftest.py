"""Shared fixtures.

Integration tests run against ONE real embedded stack per test session (tansu broker
+ valkey/redis on free loopback ports). Each test gets its own topics, consumer group
and a flushed Redis database through :func:`bwp_settings`.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from stream.core.settings import Settings, load_settings
from stream.kafka.admin import create_topics
from stream.ops.stack import EmbeddedStack, StackInfo, free_ports
from tests.helpers import REPO

TRACES = REPO.parent / "shared" / "data" / "traces"


@dataclass(frozen=True)
class RunningStack:
    info: StackInfo
    base: Settings


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> RunningStack:
    """The embedded broker and Redis, started once for the whole session."""
    state = tmp_path_factory.mktemp("bwp-stack")
    kafka_port, redis_port = free_ports(2)
    base = load_settings(
        state_dir=state,
        kafka_bootstrap=f"127.0.0.1:{kafka_port}",
        redis_url=f"redis://127.0.0.1:{redis_port}/0",
        metrics_port=0,
    )
    es = EmbeddedStack(base)
    info = es.up(partitions=4)
    yield RunningStack(info, base)
    es.down()


@pytest.fixture
def bwp_settings(stack: RunningStack, tmp_path: Path) -> Settings:
    """Settings for one test: unique topics (4 partitions) and consumer group, flushed Redis db 0."""
    import redis

    uid = uuid.uuid4().hex[:10]
    s = load_settings(
        kafka_bootstrap=stack.info.kafka_bootstrap,
        redis_url=stack.info.redis_url,
        telemetry_topic=f"t-{uid}.telemetry",
        decisions_topic=f"t-{uid}.decisions",
        dlq_topic=f"t-{uid}.telemetry.dlq",
        routes_topic=f"t-{uid}.routes",
        consumer_group=f"g-{uid}",
        state_dir=stack.base.state_dir,
        model_dir=tmp_path / "models",
        metrics_port=0,
    )
    create_topics(s, (s.telemetry_topic, s.decisions_topic, s.dlq_topic, s.routes_topic), partitions=4)
    r = redis.Redis.from_url(s.redis_url)
    r.flushdb()
    r.close()
    return s


@pytest.fixture(scope="session")
def traces_root() -> Path:
    """../shared/data/traces, or skip the test with the reason."""
    if not TRACES.is_dir():
        pytest.skip(f"real traces not available: {TRACES} is missing (CI has it)")
    return TRACES


@pytest.fixture(scope="session")
def trained_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry with one quick-trained, promoted model (trained once per session)."""
    from tests.helpers.models import quick_model_dir

    return quick_model_dir(tmp_path_factory)
