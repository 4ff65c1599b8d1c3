"""Container health checks: ``python -m stream.ops.healthcheck CHECK [CHECK ...]``.

Used by the Dockerfile ``HEALTHCHECK`` and the compose / Kubernetes probes. Each CHECK is
one of

* ``kafka``              the configured brokers answer a metadata request (security included)
* ``redis``              Redis answers PING (password / TLS from the settings)
* ``http://...``         the URL answers 200 (the worker's ``/metrics``)
* ``fresh:DIR:SECONDS``  some file under DIR was modified in the last SECONDS
* ``writable:DIR``       a file can be created in DIR

Exit status 0 when every check passes, 1 otherwise (one line per failure on stderr);
the process never runs longer than about ``--timeout`` seconds per check.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from stream.core.errors import ConfigError
from stream.core.settings import Settings, load_settings, redact_url


class CheckFailed(Exception):
    """One health check did not pass; the message says what was expected."""


def check_kafka(settings: Settings, timeout_s: float) -> None:
    """The brokers in ``BWP_KAFKA_BOOTSTRAP`` answer a metadata request."""
    from confluent_kafka import KafkaException  # confluent-kafka: only code that talks to a broker
    from confluent_kafka.admin import AdminClient  # confluent-kafka: only code that talks to a broker

    admin = AdminClient(settings.confluent_config(**{"socket.timeout.ms": int(timeout_s * 1000)}))
    try:
        md = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise CheckFailed(f"kafka {settings.kafka_bootstrap}: no metadata within {timeout_s}s: {exc}") from None
    if not md.brokers:
        raise CheckFailed(f"kafka {settings.kafka_bootstrap}: metadata lists no broker")


def check_redis(settings: Settings, timeout_s: float) -> None:
    """Redis answers PING."""
    import redis  # redis-py: only code that talks to Redis
    from redis.exceptions import RedisClusterException  # redis-py: only code that talks to Redis

    client = None
    try:
        # a cluster client connects (and may fail) while it is built
        client = settings.redis_client(timeout_s=timeout_s, connect_timeout_s=timeout_s)
        if not client.ping():
            raise CheckFailed(f"redis {redact_url(settings.redis_url)}: PING did not answer PONG")
    except (redis.RedisError, RedisClusterException) as exc:
        raise CheckFailed(f"redis {redact_url(settings.redis_url)}: {exc}") from None
    finally:
        if client is not None:
            client.close()


def check_http(url: str, timeout_s: float) -> None:
    """``url`` answers HTTP 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            if resp.status != 200:
                raise CheckFailed(f"{url}: HTTP {resp.status}, expected 200")
            resp.read(1)
    except OSError as exc:
        raise CheckFailed(f"{url}: {exc}") from None


def check_fresh(directory: Path, max_age_s: float, now: float | None = None) -> None:
    """Some file under ``directory`` (recursively) was modified within ``max_age_s``."""
    now = time.time() if now is None else now
    newest = 0.0
    if directory.is_dir():
        for root, _, files in os.walk(directory):
            for name in files:
                try:
                    newest = max(newest, os.stat(os.path.join(root, name)).st_mtime)
                except OSError:
                    continue  # renamed or removed while walking
    if newest == 0.0:
        raise CheckFailed(f"{directory}: no file at all, expected one modified in the last {max_age_s:.0f}s")
    if now - newest > max_age_s:
        raise CheckFailed(f"{directory}: newest file is {now - newest:.0f}s old, expected <= {max_age_s:.0f}s")


def check_writable(directory: Path) -> None:
    """A file can be created (and removed) in ``directory``."""
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".health-"):
            pass
    except OSError as exc:
        raise CheckFailed(f"{directory}: not writable: {exc}") from None


def run_check(spec: str, settings: Settings | None, timeout_s: float) -> None:
    """Run one CHECK spec (see the module docstring)."""
    if spec in ("kafka", "redis"):
        s = settings if settings is not None else load_settings()
        (check_kafka if spec == "kafka" else check_redis)(s, timeout_s)
    elif spec.startswith(("http://", "https://")):
        check_http(spec, timeout_s)
    elif spec.startswith("fresh:"):
        directory, _, age = spec[len("fresh:") :].rpartition(":")
        try:
            max_age = float(age)
        except ValueError:
            raise CheckFailed(f"{spec}: expected fresh:DIR:SECONDS") from None
        check_fresh(Path(directory), max_age)
    elif spec.startswith("writable:"):
        check_writable(Path(spec[len("writable:") :]))
    else:
        raise CheckFailed(f"unknown check {spec!r}: expected kafka, redis, http://..., fresh:DIR:S or writable:DIR")


def main(argv: Sequence[str] | None = None, settings: Settings | None = None) -> int:
    """Run every check given; 0 when all pass, 1 otherwise, 2 on a configuration error."""
    p = argparse.ArgumentParser(prog="python -m stream.ops.healthcheck", description=__doc__.split("\n\n")[0])
    p.add_argument("checks", nargs="+", metavar="CHECK")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds per check (default 3)")
    args = p.parse_args(argv)
    failed = 0
    for spec in args.checks:
        try:
            run_check(spec, settings, args.timeout)
        except CheckFailed as exc:
            print(f"unhealthy: {exc}", file=sys.stderr)
            failed += 1
        except ConfigError as exc:
            print(f"unhealthy: {exc}", file=sys.stderr)
            return 2
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
